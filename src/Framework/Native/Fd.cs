using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using System.Runtime.InteropServices;

namespace Vism.Native;

/// <summary>File-descriptor ownership helpers. Every fd vism holds lives in a SafeHandle, so it is closed exactly once.</summary>
public static partial class Fd
{
    /// <summary>Takes ownership of a raw descriptor.</summary>
    public static SafeFileHandle Own(int fd)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(fd);
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>The raw descriptor of a live handle (the caller keeps the handle alive).</summary>
    public static int Raw(SafeHandle handle)
    {
        ObjectDisposedException.ThrowIf(handle.IsClosed || handle.IsInvalid, handle);
        return (int)handle.DangerousGetHandle();
    }

    /// <summary>Duplicates a descriptor (close-on-exec) into a new owned handle.</summary>
    public static SafeFileHandle Dup(SafeHandle handle)
    {
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = LibC.fcntl((int)handle.DangerousGetHandle(), LibC.F_DUPFD_CLOEXEC, 0);
            if (fd < 0) throw PosixException.FromPInvoke("fcntl(F_DUPFD_CLOEXEC)");
            return Own(fd);
        }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }

    /// <summary>Size of the file behind a descriptor.</summary>
    public static long Size(SafeHandle handle)
    {
        PosixException.Check(Syscall.fstat(Raw(handle), out Stat st), "fstat");
        return st.st_size;
    }

    /// <summary>Sets O_NONBLOCK.</summary>
    public static void SetNonBlocking(SafeHandle handle, bool nonBlocking = true)
    {
        int fd = Raw(handle);
        int flags = PosixException.Check(Syscall.fcntl(fd, FcntlCommand.F_GETFL), "fcntl(F_GETFL)");
        int want = nonBlocking ? flags | (int)OpenFlags.O_NONBLOCK : flags & ~(int)OpenFlags.O_NONBLOCK;
        if (want != flags)
            PosixException.Check(Syscall.fcntl(fd, FcntlCommand.F_SETFL, want), "fcntl(F_SETFL)");
    }

    /// <summary>Raises the soft RLIMIT_NOFILE of this process to its hard limit (a host serving
    /// a thousand devices needs several descriptors per device).</summary>
    /// <returns>The soft limit now in force.</returns>
    public static ulong RaiseOpenFileLimit()
    {
        if (LibC.getrlimit(LibC.RLIMIT_NOFILE, out LibC.RLimit limit) != 0)
            throw PosixException.FromPInvoke("getrlimit(RLIMIT_NOFILE)");
        if (limit.Current < limit.Maximum)
        {
            var raised = new LibC.RLimit { Current = limit.Maximum, Maximum = limit.Maximum };
            if (LibC.setrlimit(LibC.RLIMIT_NOFILE, raised) != 0)
                throw PosixException.FromPInvoke("setrlimit(RLIMIT_NOFILE)");
            return raised.Current;
        }
        return limit.Current;
    }

    /// <summary>Number of open descriptors of this process (for leak tests).</summary>
    public static int CountOpen() => Directory.GetFiles("/proc/self/fd").Length;
}
