using System.Globalization;
using Microsoft.Win32.SafeHandles;
using Vism.Native;

namespace Vism.Transport.Mmio;

/// <summary>
/// The eventfds every MMIO connection in this process has wired, by the kernel's eventfd id
/// (<c>eventfd-id</c> in /proc/self/fdinfo, the same for every descriptor of one eventfd), as
/// interrupt lines and as NOTIFY doorbells. One eventfd may not be both, on one device or across
/// two: an interrupt would then ring a doorbell, and two devices sharing a region, each one's
/// vector the other's (or its own) doorbell, would notify each other for ever without the VMM
/// sending anything (a loop turn per hop, at no cost to the VMM). Thread-safe: devices live on
/// different loops.
/// </summary>
internal static class WiredEventFds
{
    private static readonly Lock Gate = new();
    private static readonly Dictionary<long, int> Lines = [];
    private static readonly Dictionary<long, int> Doorbells = [];

    private static int _unknownReported;

    /// <summary>The eventfd id of <paramref name="fd"/>, or -1 when the kernel does not show one
    /// (its fdinfo has no <c>eventfd-id</c> line: the guard is then off).</summary>
    /// <exception cref="IOException">When the fdinfo cannot be read (for one, the process is out of
    /// descriptors): the caller must refuse the descriptor, not wire it unguarded.</exception>
    public static long IdOf(SafeFileHandle fd)
    {
        foreach (string line in File.ReadLines($"/proc/self/fdinfo/{Fd.Raw(fd)}"))
            if (line.StartsWith("eventfd-id:", StringComparison.Ordinal)
                && long.TryParse(line.AsSpan("eventfd-id:".Length).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long id))
                return id;
        return -1;
    }

    /// <summary>True the first time in this process that <paramref name="id"/> is unknown (-1), so
    /// the transport can say once that the guard is off.</summary>
    public static bool FirstUnknown(long id) => id < 0 && Interlocked.Exchange(ref _unknownReported, 1) == 0;

    /// <summary>Takes <paramref name="id"/> as an interrupt line (true) or a doorbell (false), unless
    /// it is wired as the other kind.</summary>
    /// <returns>False when it is the other kind already.</returns>
    public static bool TryTake(long id, bool line)
    {
        if (id < 0) return true;
        lock (Gate)
        {
            if ((line ? Doorbells : Lines).ContainsKey(id)) return false;
            Dictionary<long, int> mine = line ? Lines : Doorbells;
            mine[id] = mine.GetValueOrDefault(id) + 1;
            return true;
        }
    }

    /// <summary>Gives back what <see cref="TryTake"/> took.</summary>
    public static void Release(long id, bool line)
    {
        if (id < 0) return;
        lock (Gate)
        {
            Dictionary<long, int> mine = line ? Lines : Doorbells;
            if (mine.TryGetValue(id, out int n))
            {
                if (n <= 1) mine.Remove(id);
                else mine[id] = n - 1;
            }
        }
    }
}

/// <summary>An eventfd a VMM gave, duplicated by the device and taken in <see cref="WiredEventFds"/>
/// as an interrupt line or a doorbell until disposed.</summary>
internal sealed class WiredEventFd(EventFd fd, long id, bool line) : IDisposable
{
    private bool _disposed;

    public EventFd Fd { get; } = fd;

    public void Dispose()
    {
        if (_disposed) return; // the id is given back once
        _disposed = true;
        Fd.Dispose();
        WiredEventFds.Release(id, line);
    }
}
