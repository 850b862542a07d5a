using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Vism.PluginKit;

/// <summary>An eventfd: a 64-bit counter behind a descriptor, the kick and interrupt primitive of
/// virtio over vhost-user. Hand <see cref="Handle"/> to <c>IDeviceLoop.WatchReadable</c> to be
/// called on the device's loop when it is signalled. <see cref="Signal"/> and <see cref="Drain"/> may
/// be called from any thread.</summary>
public sealed class EventFd : IDisposable
{
    private EventFd(SafeFileHandle handle) => Handle = handle;

    /// <summary>The descriptor (owned; closed by <see cref="Dispose"/>).</summary>
    public SafeFileHandle Handle { get; }

    /// <summary>Creates a close-on-exec eventfd with a zero counter.</summary>
    /// <param name="nonBlocking">EFD_NONBLOCK: <see cref="Drain"/> returns 0 instead of blocking (default).</param>
    /// <returns>The eventfd.</returns>
    /// <exception cref="NativeCallException">When the kernel refuses (descriptor limit).</exception>
    public static EventFd Create(bool nonBlocking = true)
    {
        int fd = Interop.eventfd(0, Interop.EFD_CLOEXEC | (nonBlocking ? Interop.EFD_NONBLOCK : 0));
        if (fd < 0) throw NativeCallException.Last("eventfd");
        return new EventFd(new SafeFileHandle(fd, ownsHandle: true));
    }

    /// <summary>Wraps an eventfd received from elsewhere (for example over a Unix socket); the result owns it.</summary>
    /// <param name="handle">The descriptor.</param>
    /// <returns>The eventfd.</returns>
    public static EventFd Adopt(SafeFileHandle handle)
    {
        ArgumentNullException.ThrowIfNull(handle);
        return new EventFd(handle);
    }

    /// <summary>Adds <paramref name="value"/> to the counter, waking a reader.</summary>
    /// <param name="value">The increment (1 for a kick or an interrupt).</param>
    /// <returns>False when the descriptor is closed or the write failed; a saturated counter
    /// (EAGAIN) counts as signalled, since its reader is awake anyway.</returns>
    public unsafe bool Signal(ulong value = 1)
    {
        if (Handle.IsClosed) return false;
        nint rc = Interop.write(Interop.Raw(Handle), &value, 8);
        bool ok = rc == 8 || Marshal.GetLastPInvokeError() == Interop.EAGAIN;
        GC.KeepAlive(Handle);
        return ok;
    }

    /// <summary>Reads and clears the counter.</summary>
    /// <returns>The counter, or 0 when it was 0 (non-blocking), the descriptor is closed, or the read failed.</returns>
    public unsafe ulong Drain()
    {
        if (Handle.IsClosed) return 0;
        ulong value = 0;
        nint rc = Interop.read(Interop.Raw(Handle), &value, 8);
        GC.KeepAlive(Handle);
        return rc == 8 ? value : 0;
    }

    /// <summary>Blocks the calling thread until the counter is non-zero or <paramref name="timeout"/>
    /// passes, then drains it. Never call it on a device loop: watch <see cref="Handle"/> there instead.</summary>
    /// <param name="timeout">How long to wait.</param>
    /// <returns>The counter, or 0 on timeout.</returns>
    /// <exception cref="NativeCallException">When poll fails.</exception>
    public unsafe ulong Wait(TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            var fd = new Interop.PollFd { Fd = Interop.Raw(Handle), Events = Interop.POLLIN };
            int remaining = (int)Math.Clamp(deadline - Environment.TickCount64, 0, int.MaxValue);
            int rc = Interop.poll(&fd, 1, remaining);
            GC.KeepAlive(Handle);
            if (rc > 0)
            {
                ulong value = Drain();
                if (value != 0) return value;
            }
            else if (rc < 0 && Marshal.GetLastPInvokeError() != Interop.EINTR)
                throw NativeCallException.Last("poll(eventfd)");
            if (Environment.TickCount64 >= deadline) return 0;
        }
    }

    /// <summary>Closes the descriptor.</summary>
    public void Dispose() => Handle.Dispose();
}
