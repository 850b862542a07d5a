using System.Runtime.InteropServices;

namespace Vism.Native;

/// <summary>The system calls Mono.Posix does not offer.</summary>
internal static partial class LibC
{
    // memfd_create, eventfd and fallocate live in Vism.PluginKit (shared with plugins).
    public const int FALLOC_FL_KEEP_SIZE = 0x01;

    public const int MAP_SHARED = 0x01;
    public const int MAP_PRIVATE = 0x02;
    public const int MAP_FIXED = 0x10;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MAP_NORESERVE = 0x4000;
    public const int MAP_HUGETLB = 0x40000;
    public const int PROT_NONE = 0;
    public const int PROT_READ = 1;
    public const int PROT_WRITE = 2;

    [LibraryImport("libc", EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int memfd_create(string name, uint flags);

    /// <summary>poll(2) on raw <c>struct pollfd</c>s (8 bytes each: int fd, short events, short revents).</summary>
    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    public static unsafe partial int poll(void* fds, nuint nfds, int timeout);

    /// <summary>POLLIN.</summary>
    public const short POLLIN = 1;

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    public static partial int eventfd(uint initval, int flags);

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    public static partial int fallocate(int fd, int mode, long offset, long len);

    /// <summary>EPOLL_CLOEXEC as Linux defines it (Mono.Posix's EpollFlags.EPOLL_CLOEXEC is 0x2000000, which the kernel rejects with EINVAL).</summary>
    public const int EPOLL_CLOEXEC = 0x80000;

    [LibraryImport("libc", EntryPoint = "epoll_create1", SetLastError = true)]
    public static partial int epoll_create1(int flags);

    /// <summary>A <c>struct timespec</c> (64-bit Linux).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;

        public static Timespec FromNanoseconds(long ns) => new() { Seconds = ns / 1_000_000_000, Nanoseconds = ns % 1_000_000_000 };
    }

    /// <summary>A <c>struct itimerspec</c>: the period (zero: one-shot) and the first expiry.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct ITimerspec
    {
        public Timespec Interval;
        public Timespec Value;
    }

    /// <summary>epoll_pwait2 (Linux 5.11, glibc 2.35): epoll_wait with a nanosecond timeout; a null
    /// timeout waits indefinitely. <paramref name="events"/> points at raw <c>struct epoll_event</c>s
    /// (12 bytes packed on x86-64, 16 elsewhere: see <see cref="EpollEventSize"/>).</summary>
    [LibraryImport("libc", EntryPoint = "epoll_pwait2", SetLastError = true)]
    public static unsafe partial int epoll_pwait2(int epfd, void* events, int maxevents, Timespec* timeout, void* sigmask);

    /// <summary>epoll_wait on raw <c>struct epoll_event</c>s (the timerfd fallback of the loop).</summary>
    [LibraryImport("libc", EntryPoint = "epoll_wait", SetLastError = true)]
    public static unsafe partial int epoll_wait(int epfd, void* events, int maxevents, int timeout);

    /// <summary>Size of <c>struct epoll_event</c>: packed on x86-64 (the kernel's EPOLL_PACKED), naturally aligned elsewhere.</summary>
    public static readonly int EpollEventSize = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 12 : 16;

    /// <summary>Offset of the 64-bit data member in <c>struct epoll_event</c>.</summary>
    public static readonly int EpollDataOffset = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 4 : 8;

    public const int CLOCK_MONOTONIC = 1;
    public const int TFD_NONBLOCK = 0x800;
    public const int TFD_CLOEXEC = 0x80000;

    [LibraryImport("libc", EntryPoint = "timerfd_create", SetLastError = true)]
    public static partial int timerfd_create(int clockid, int flags);

    [LibraryImport("libc", EntryPoint = "timerfd_settime", SetLastError = true)]
    public static unsafe partial int timerfd_settime(int fd, int flags, ITimerspec* newValue, ITimerspec* oldValue);

    /// <summary>prctl option: the calling thread's timer slack in nanoseconds (how late the kernel may
    /// fire its timeouts to group wake-ups; 50 µs by default).</summary>
    public const int PR_SET_TIMERSLACK = 29;
    public const int PR_GET_TIMERSLACK = 30;

    [LibraryImport("libc", EntryPoint = "prctl", SetLastError = true)]
    public static partial int prctl(int option, ulong arg2, ulong arg3, ulong arg4, ulong arg5);

    public const int F_DUPFD_CLOEXEC = 1030;

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    public static partial int fcntl(int fd, int cmd, int arg);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    public static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    public static partial int munmap(nint addr, nuint length);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    public static partial int mprotect(nint addr, nuint length, int prot);

    public const int RLIMIT_NOFILE = 7;

    [StructLayout(LayoutKind.Sequential)]
    public struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport("libc", EntryPoint = "getrlimit", SetLastError = true)]
    public static partial int getrlimit(int resource, out RLimit limit);

    [LibraryImport("libc", EntryPoint = "setrlimit", SetLastError = true)]
    public static partial int setrlimit(int resource, in RLimit limit);

    [LibraryImport("libc", EntryPoint = "getsockname", SetLastError = true)]
    public static unsafe partial int getsockname(int fd, byte* address, ref uint length);
}
