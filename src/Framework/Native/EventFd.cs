using Mono.Unix.Native;
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

    /// <summary>Waits until the counter is non-zero or the timeout passes, then drains it. Allocates nothing.</summary>
    /// <returns>The counter value, or 0 on timeout.</returns>
    public ulong Wait(TimeSpan timeout) => Wait(timeout, TimeSpan.Zero);

    /// <summary>Like <see cref="Wait(TimeSpan)"/>, but first reads the (non-blocking) counter in a
    /// loop for up to <paramref name="spin"/> (yielding the core at every look) before it sleeps in poll(2): a waiter that expects a
    /// signal within microseconds trades that much CPU for the wake-up it saves. Allocates nothing.</summary>
    /// <param name="timeout">How long to wait in all.</param>
    /// <param name="spin">How long to spin first (zero: block at once).</param>
    /// <returns>The counter value, or 0 on timeout.</returns>
    public unsafe ulong Wait(TimeSpan timeout, TimeSpan spin)
    {
        if (spin > TimeSpan.Zero)
        {
            long spinUntil = System.Diagnostics.Stopwatch.GetTimestamp() + (long)(spin.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
            do
            {
                ulong v = Drain();
                if (v != 0) return v;
                // Yield at every look, as VirtioDriver.WaitUsed does: the thread that will signal
                // (vism's loop, on a small host) may be waiting for this core.
                Thread.Yield();
            }
            while (System.Diagnostics.Stopwatch.GetTimestamp() < spinUntil);
        }
        int fd = Fd.Raw(Handle);
        long* pfd = stackalloc long[1];
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            int remaining = (int)Math.Max(0, deadline - Environment.TickCount64);
            *pfd = (uint)fd | ((long)LibC.POLLIN << 32); // struct pollfd { int fd; short events; short revents; }
            int rc = LibC.poll(pfd, 1, remaining);
            if (rc > 0)
            {
                ulong v = Drain();
                if (v != 0) return v;
            }
            else if (rc < 0 && NativeConvert.ToErrno(System.Runtime.InteropServices.Marshal.GetLastPInvokeError()) != Errno.EINTR)
                throw PosixException.FromPInvoke("poll(eventfd)");
            if (Environment.TickCount64 >= deadline) return 0;
        }
    }

    public void Dispose() => _fd.Dispose();
}
