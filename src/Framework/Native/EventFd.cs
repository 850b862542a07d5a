using Microsoft.Win32.SafeHandles;

namespace Vism.Native;

/// <summary>An eventfd: the interrupt and kick primitive shared by transports and drivers
/// (Vism.PluginKit's, with failures as <see cref="PosixException"/>).</summary>
public sealed class EventFd : IDisposable
{
    private readonly PluginKit.EventFd _fd;

    private EventFd(PluginKit.EventFd fd) => _fd = fd;

    /// <summary>The descriptor (owned).</summary>
    public SafeFileHandle Handle => _fd.Handle;

    /// <summary>Creates a non-blocking, close-on-exec eventfd.</summary>
    public static EventFd Create(bool nonBlocking = true) => new(MemFd.Posix(() => PluginKit.EventFd.Create(nonBlocking)));

    /// <summary>Wraps a received eventfd (ownership moves to the result).</summary>
    public static EventFd Adopt(SafeFileHandle handle) => new(PluginKit.EventFd.Adopt(handle));

    /// <summary>Adds 1 to the counter, waking a reader. Returns false if the fd is gone.</summary>
    public bool Signal(ulong value = 1) => _fd.Signal(value);

    /// <summary>Reads and clears the counter. Returns 0 when it was 0 (non-blocking) or on error.</summary>
    public ulong Drain() => _fd.Drain();

    /// <summary>Waits until the counter is non-zero or the timeout passes, then drains it.</summary>
    /// <returns>The counter value, or 0 on timeout.</returns>
    public ulong Wait(TimeSpan timeout) => MemFd.Posix(() => _fd.Wait(timeout));

    public void Dispose() => _fd.Dispose();
}
