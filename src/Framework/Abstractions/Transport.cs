namespace Vism.Abstractions;

/// <summary>
/// A transport plugin: how a driver reaches one device (vhost-user socket, MMIO register window).
/// One instance per device, created through DI with its options type, a
/// <see cref="DeviceDescription"/>, the device's <see cref="IDeviceLoop"/> and a logger.
/// The transport owns its wire protocol; it turns it into <see cref="IVirtioDevice"/> calls.
/// </summary>
public interface ITransport : IAsyncDisposable
{
    /// <summary>Where a driver or VMM reaches the device (for example a socket path); logged at start.</summary>
    string Endpoint { get; }

    /// <summary>Number of extra interrupt vectors the transport offers for per-region IRQ
    /// (VIRTIO_ISM_F_EVENT_IRQ). Default zero: it offers none.</summary>
    int VectorCount => 0;

    /// <summary>Starts serving <paramref name="device"/>: binds the endpoint and accepts drivers.
    /// Called on the device's loop. Throws when the endpoint cannot be served (the host then
    /// reports the device as failed and exits non-zero).</summary>
    /// <param name="device">The device to serve.</param>
    void Start(IVirtioDevice device);
}

/// <summary>
/// What a connected transport offers the device: guest memory, interrupts and the shared-memory
/// windows. Call only on the device's loop.
/// </summary>
public interface ITransportServices
{
    /// <summary>The driver's memory as currently mapped. May change between loop turns.</summary>
    IGuestMemory Memory { get; }

    /// <summary>Used-buffer notification for a queue (interrupt, vhost-user call fd).</summary>
    /// <param name="queueIndex">Queue index.</param>
    void SignalQueue(int queueIndex);

    /// <summary>Configuration-change notification (also used after DEVICE_NEEDS_RESET).</summary>
    void SignalConfigChange();

    /// <summary>Number of per-region interrupt vectors available (see <see cref="ITransport.VectorCount"/>).</summary>
    int VectorCount { get; }

    /// <summary>Fires interrupt vector <paramref name="vector"/> (0-based, below <see cref="VectorCount"/>).</summary>
    /// <param name="vector">Vector number.</param>
    void SignalVector(int vector);

    /// <summary>Whether the driver side is started, so window mappings may be changed now.
    /// (QEMU 11.1.3 crashes on SHMEM_MAP while the device is stopped.)</summary>
    bool CanMap { get; }

    /// <summary>Maps <paramref name="length"/> bytes of <paramref name="block"/> at
    /// <paramref name="windowOffset"/> in window <paramref name="shmId"/>, read-write or read-only.
    /// Completes on the device's loop; never blocks it.</summary>
    /// <param name="shmId">The window.</param>
    /// <param name="windowOffset">Offset inside the window (page aligned).</param>
    /// <param name="block">The backing to map.</param>
    /// <param name="length">Bytes to map from the start of the block (page aligned, at most its length).</param>
    /// <param name="writable">Read-write when true, read-only otherwise.</param>
    /// <returns>Null on success, otherwise the reason it failed.</returns>
    ValueTask<string?> MapAsync(ShmId shmId, ulong windowOffset, IMemoryBlock block, ulong length, bool writable);

    /// <summary>Reports, through <see cref="IVirtioDevice.NotifyWrite"/>, every NOTIFY-window write
    /// the driver made so far that the transport has not reported yet. The device calls it before
    /// it serves each control request, so that an update the driver signalled before a request (a
    /// notify, then DETACH) reaches the peers before that request is served, with or without a
    /// kick (under VIRTIO_F_EVENT_IDX a driver does not kick a device that is still busy). A
    /// transport that traps writes reports them in order anyway and needs nothing here (the
    /// default); one that polls shared memory scans it now.</summary>
    void FlushNotifyWrites()
    {
    }

    /// <summary>Removes a mapping made by <see cref="MapAsync"/>.</summary>
    /// <param name="shmId">The window.</param>
    /// <param name="windowOffset">Offset of the mapping.</param>
    /// <param name="length">Length of the mapping.</param>
    /// <returns>Null on success, otherwise the reason it failed.</returns>
    ValueTask<string?> UnmapAsync(ShmId shmId, ulong windowOffset, ulong length);
}
