using System.Runtime.InteropServices;

namespace Vism.Host.Composition;

/// <summary>RLIMIT_NOFILE: a host with many devices holds many fds (sockets, eventfds, memfds per region).</summary>
internal static partial class ResourceLimits
{
    private const int RlimitNoFile = 7;

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Max;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getrlimit(int resource, out RLimit limit);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setrlimit(int resource, in RLimit limit);

    /// <summary>Raises the soft open-files limit to the hard limit.</summary>
    /// <returns>(before, after), or null when the limits cannot be read or set.</returns>
    public static (ulong Before, ulong After)? RaiseOpenFiles()
    {
        if (getrlimit(RlimitNoFile, out RLimit limit) != 0) return null;
        ulong before = limit.Current;
        if (limit.Current < limit.Max)
        {
            var raised = new RLimit { Current = limit.Max, Max = limit.Max };
            if (setrlimit(RlimitNoFile, raised) != 0) return null;
        }
        return getrlimit(RlimitNoFile, out RLimit now) == 0 ? (before, now.Current) : null;
    }
}
