using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.VhostUser;

/// <summary>
/// The NOTIFY shared-memory window of one connection: a memfd the frontend maps into the guest,
/// and the poller that reports the driver's writes to the device.
/// </summary>
internal sealed class NotifyWindow : IDisposable
{
    private NotifyWindow(SafeFileHandle fd, Mapping map, NotifyPoller poller)
    {
        Fd = fd;
        Map = map;
        Poller = poller;
    }

    public SafeFileHandle Fd { get; }

    public Mapping Map { get; }

    public NotifyPoller Poller { get; }

    public ulong Length => Map.Length;

    /// <summary>The window of <paramref name="device"/>, or null when it has none.</summary>
    public static NotifyWindow? Create(IVirtioDevice device, IDeviceLoop loop, IDeviceCounters counters, VhostUserOptions options)
    {
        ulong length = 0;
        foreach (SharedMemoryWindow w in device.SharedMemory)
            if (w.Id == ShmId.Notify) length = w.Length;
        if (length == 0) return null;
        SafeFileHandle fd = MemFd.Create($"vism-notify-{device.Description.Name}", length);
        Mapping map = Mapping.Map(fd, 0, length);
        return new NotifyWindow(fd, map, new NotifyPoller(device, map, NotifyScanner.For(loop), counters, NotifyPollPolicy.From(options)));
    }

    /// <summary>Zeroes the window (before it is shared with a new start).</summary>
    public void Clear()
    {
        for (ulong at = 0; at < Map.Length; at += 1 << 20)
            Map.Span(at, (int)Math.Min(1UL << 20, Map.Length - at)).Clear();
        Poller.ResetSnapshot();
    }

    /// <summary>Stops the poller (the mapping and fd stay until <see cref="Dispose"/>).</summary>
    public void StopPolling() => Poller.Dispose();

    public void Dispose()
    {
        Poller.Dispose();
        Map.Dispose();
        Fd.Dispose();
    }
}
