using System.Runtime.InteropServices;

namespace Vism.Benchmarks;

/// <summary>CPU time (user + system) from getrusage, in microseconds.</summary>
internal static partial class CpuTime
{
    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct Rusage
    {
        public long UserSeconds, UserMicroseconds, SystemSeconds, SystemMicroseconds;
        public fixed long Rest[14];
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getrusage(int who, out Rusage usage);

    /// <summary>The calling thread's (RUSAGE_THREAD).</summary>
    public static long ThreadMicroseconds() => Get(1);

    /// <summary>The whole process's (RUSAGE_SELF).</summary>
    public static long ProcessMicroseconds() => Get(0);

    private static long Get(int who)
    {
        if (getrusage(who, out Rusage u) != 0) throw new InvalidOperationException($"getrusage failed: errno {Marshal.GetLastPInvokeError()}");
        return (u.UserSeconds + u.SystemSeconds) * 1_000_000 + u.UserMicroseconds + u.SystemMicroseconds;
    }
}
