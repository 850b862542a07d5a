namespace Vism.Abstractions;

/// <summary>What the configuration fixed about one device; available to every plugin through DI.</summary>
public sealed record DeviceDescription
{
    /// <summary>The device's <c>name</c> from the config; unique in the host.</summary>
    public required string Name { get; init; }

    /// <summary>Virtio device ID presented to the driver (default <see cref="Virtio.IsmDeviceId"/>).</summary>
    public uint VirtioId { get; init; } = Virtio.IsmDeviceId;

    /// <summary><c>region_size</c>: the size of every ISM region in the REGIONS window (power of two).</summary>
    public required ulong RegionSize { get; init; }

    /// <summary><c>notify_size</c>: the size of each region's slot in the NOTIFY window.</summary>
    public required ulong NotifySize { get; init; }

    /// <summary>Number of region slots in the REGIONS window.</summary>
    public required int MaxRegions { get; init; }

    /// <summary>Length of the REGIONS window (shmid 1) in bytes.</summary>
    public required ulong RegionsWindowSize { get; init; }

    /// <summary>Length of the NOTIFY window (shmid 2) in bytes (page multiple).</summary>
    public required ulong NotifyWindowSize { get; init; }
}

/// <summary>What the configuration fixed about the host process; available to every plugin through DI.</summary>
public sealed record HostDescription
{
    /// <summary>The host's <c>gid</c>.</summary>
    public required ulong Gid { get; init; }

    /// <summary>Directory for state that must survive a restart (persistent regions, status).</summary>
    public required string StateDirectory { get; init; }

    /// <summary>Default directory for Unix sockets.</summary>
    public required string SocketDirectory { get; init; }

    /// <summary>Default owner (user name or uid) of listening sockets, validated; empty leaves the process's user.</summary>
    public string SocketOwner { get; init; } = "";

    /// <summary>Default group (name or gid) of listening sockets, validated; empty leaves the process's group.</summary>
    public string SocketGroup { get; init; } = "";

    /// <summary>Default permission bits of listening sockets, octal such as <c>"0660"</c>, validated; empty leaves the umask's.</summary>
    public string SocketMode { get; init; } = "";
}

/// <summary>A shared-memory window the device exposes (virtio 1.x "Shared Memory Regions").</summary>
/// <param name="Id">The shmid.</param>
/// <param name="Length">Length in bytes; a multiple of the page size.</param>
public readonly record struct SharedMemoryWindow(ShmId Id, ulong Length);

/// <summary>How the driver configured one split virtqueue.</summary>
/// <param name="Size">Number of descriptors (power of two, 1..<see cref="IVirtioDevice.MaxQueueSize"/>).</param>
/// <param name="DescriptorTable">Guest-physical address of the descriptor table (16-byte aligned).</param>
/// <param name="AvailRing">Guest-physical address of the available (driver) ring (2-byte aligned).</param>
/// <param name="UsedRing">Guest-physical address of the used (device) ring (4-byte aligned).</param>
/// <param name="NextAvail">Index of the next available entry the device will read (vhost-user SET_VRING_BASE; 0 otherwise).</param>
public readonly record struct QueueSettings(ushort Size, ulong DescriptorTable, ulong AvailRing, ulong UsedRing, ushort NextAvail = 0);

/// <summary>
/// The virtio device model as a transport drives it. A transport translates its own wire format
/// (vhost-user messages, MMIO registers) into these calls and never decides ISM semantics.
/// Every member must be called on the device's <see cref="IDeviceLoop"/>.
/// Bad input never throws: methods return false and the reason is logged and counted.
/// </summary>
public interface IVirtioDevice
{
    /// <summary>The configuration of this device.</summary>
    DeviceDescription Description { get; }

    /// <summary>The loop that owns this device.</summary>
    IDeviceLoop Loop { get; }

    /// <summary>Virtio device ID.</summary>
    uint DeviceId { get; }

    /// <summary>Features the device offers (VERSION_1, ring features, the event channel's bit).</summary>
    ulong DeviceFeatures { get; }

    /// <summary>Features the driver wrote (valid once <see cref="DeviceStatus.FeaturesOk"/> is set).</summary>
    ulong DriverFeatures { get; }

    /// <summary>Records the driver's features. Refused once FEATURES_OK is set.</summary>
    /// <param name="features">The 64-bit driver feature word.</param>
    /// <returns>False when refused.</returns>
    bool TrySetDriverFeatures(ulong features);

    /// <summary>Current device status.</summary>
    DeviceStatus Status { get; }

    /// <summary>Applies a status write by the driver. Zero resets the device. Only transitions in
    /// the device's table are accepted; FEATURES_OK is refused (not latched) when the driver
    /// features are not a subset of the device's or lack VERSION_1; DRIVER_OK activates queues.</summary>
    /// <param name="status">The full new status value.</param>
    /// <returns>False when refused; the status is then unchanged.</returns>
    bool TrySetStatus(DeviceStatus status);

    /// <summary>Resets the device: status 0, queues stopped, every region attachment released.
    /// The devid is kept.</summary>
    void Reset();

    /// <summary>Config space generation; changes whenever config space changes.</summary>
    uint ConfigGeneration { get; }

    /// <summary>Size of the device configuration space in bytes.</summary>
    int ConfigSize { get; }

    /// <summary>Reads device config space. Fails for ranges outside it or widths other than 1, 2, 4 or 8.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="destination">Receives the bytes (little endian).</param>
    /// <returns>Whether the read was in bounds.</returns>
    bool TryReadConfig(uint offset, Span<byte> destination);

    /// <summary>Writes device config space. The ISM config space is read-only, so this always fails and logs.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="source">Bytes to write.</param>
    /// <returns>Whether the write was accepted.</returns>
    bool TryWriteConfig(uint offset, ReadOnlySpan<byte> source);

    /// <summary>The shared-memory windows (REGIONS, then NOTIFY), fixed for the device's lifetime.</summary>
    IReadOnlyList<SharedMemoryWindow> SharedMemory { get; }

    /// <summary>Number of virtqueues the device has (controlq, plus the eventq when the event channel uses one).</summary>
    int QueueCount { get; }

    /// <summary>Maximum queue size the device accepts.</summary>
    ushort MaxQueueSize { get; }

    /// <summary>Configures and starts a queue. Fails for a bad index, a size that is zero, too large
    /// or not a power of two, misaligned addresses, or rings outside guest memory.</summary>
    /// <param name="index">Queue index.</param>
    /// <param name="settings">The ring layout.</param>
    /// <returns>Whether the queue was started.</returns>
    bool TryStartQueue(int index, in QueueSettings settings);

    /// <summary>Stops a queue (vhost-user GET_VRING_BASE, MMIO QueueReset) and returns the index of
    /// the next available entry it would have read.</summary>
    /// <param name="index">Queue index.</param>
    /// <returns>The next available index; 0 for an unknown queue.</returns>
    ushort StopQueue(int index);

    /// <summary>Whether the queue is started.</summary>
    /// <param name="index">Queue index.</param>
    bool IsQueueStarted(int index);

    /// <summary>The driver notified (kicked) a queue. Processing happens on the loop.</summary>
    /// <param name="index">Queue index.</param>
    void NotifyQueue(int index);

    /// <summary>The driver wrote into the NOTIFY window. The device maps the offset to a region slot
    /// and routes an update event to every other device referencing that region.</summary>
    /// <param name="offset">Byte offset inside the NOTIFY window.</param>
    void NotifyWrite(ulong offset);

    /// <summary>One more than the highest region slot in use (0 when none), so a transport that
    /// polls notify slots can limit its scan.</summary>
    int SlotsInUse { get; }

    /// <summary>A driver (VMM, frontend) connected: from now on the device may use <paramref name="services"/>.</summary>
    /// <param name="services">What the transport offers the device for this connection.</param>
    void Connect(ITransportServices services);

    /// <summary>The driver is gone (socket closed, VMM died). The device resets itself, releasing all attachments.</summary>
    void Disconnect();
}
