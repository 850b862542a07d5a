using Vism.Abstractions;

namespace Vism.Driver;

/// <summary>
/// The driver's side of one transport: the operations a virtio driver (or the VMM acting for it)
/// performs on a device. Implemented by the vhost-user frontend, the MMIO client and the in-memory
/// transport; the virtio driver and the ISM client are written once on top.
/// Methods throw <see cref="DriverTransportException"/> when the device side is gone or answers
/// with a protocol error.
/// </summary>
public interface IDriverTransport : IDisposable
{
    /// <summary>Driver memory shared with the device (rings and buffers live here).</summary>
    GuestRam Ram { get; }

    /// <summary>The virtio device ID the device reports.</summary>
    uint DeviceId { get; }

    /// <summary>Reads the 64-bit device feature word.</summary>
    ulong ReadDeviceFeatures();

    /// <summary>Writes the 64-bit driver feature word.</summary>
    void WriteDriverFeatures(ulong features);

    /// <summary>Reads the device status.</summary>
    DeviceStatus ReadStatus();

    /// <summary>Writes the device status (0 resets the device).</summary>
    void WriteStatus(DeviceStatus status);

    /// <summary>Reads device config space.</summary>
    void ReadConfig(uint offset, Span<byte> destination);

    /// <summary>Reads the config generation counter.</summary>
    uint ReadConfigGeneration();

    /// <summary>Maximum size of queue <paramref name="index"/>; 0 when the queue does not exist.</summary>
    ushort MaxQueueSize(int index);

    /// <summary>Hands a configured ring to the device and starts it.</summary>
    void StartQueue(int index, QueueSettings settings);

    /// <summary>Notifies the device that queue <paramref name="index"/> has new buffers.</summary>
    void Kick(int index);

    /// <summary>Waits until the device signals queue <paramref name="index"/> (used buffers) or the
    /// timeout passes. A spurious return is allowed; callers re-check the used ring.</summary>
    bool WaitQueue(int index, TimeSpan timeout);

    /// <summary>Length of shared-memory window <paramref name="id"/>; 0 when the device has none.</summary>
    ulong ShmLength(ShmId id);

    /// <summary>Host address of the driver-side view of window <paramref name="id"/> (what the guest
    /// sees through the BAR): region memory the device mapped there is readable and writable through it.</summary>
    nint ShmAddress(ShmId id);

    /// <summary>Writes <paramref name="value"/> at <paramref name="offset"/> of the NOTIFY window
    /// (for MMIO a trapped write forwarded to the device; for vhost-user a store into shared memory).</summary>
    void WriteNotify(ulong offset, byte value = 1);

    /// <summary>Signals an update on the notify slot at <paramref name="offset"/> the way this
    /// transport needs it seen: where the NOTIFY window is trapped (MMIO, in-memory) any write does;
    /// where it is polled memory (vhost-user) the store must change the slot's value, and vism's
    /// frontend then also rings its doorbell.</summary>
    /// <param name="offset">Offset in the NOTIFY window.</param>
    void Notify(ulong offset) => WriteNotify(offset);

    /// <summary><see cref="WaitQueue(int, TimeSpan)"/>, spinning up to <paramref name="spin"/> first
    /// where the transport can (the default blocks at once).</summary>
    bool WaitQueue(int index, TimeSpan timeout, TimeSpan spin) => WaitQueue(index, timeout);

    /// <summary><see cref="WaitVector(int, TimeSpan)"/>, spinning up to <paramref name="spin"/> first
    /// where the transport can (the default blocks at once).</summary>
    bool WaitVector(int vector, TimeSpan timeout, TimeSpan spin) => WaitVector(vector, timeout);

    /// <summary>Number of per-region interrupt vectors the transport offers.</summary>
    int VectorCount { get; }

    /// <summary>Waits until vector <paramref name="vector"/> fires or the timeout passes; true when it fired
    /// (each firing is consumed once).</summary>
    bool WaitVector(int vector, TimeSpan timeout);
}

/// <summary>The device side of a driver transport failed or disconnected.</summary>
public sealed class DriverTransportException(string message, Exception? inner = null) : Exception(message, inner);
