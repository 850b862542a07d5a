using System.Globalization;
using System.Text;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace Vism.Native;

/// <summary>
/// Listening Unix sockets handed to the process by its service manager (systemd socket activation:
/// <c>LISTEN_PID</c>, <c>LISTEN_FDS</c>, descriptors from 3 on). Each is keyed by the path it is bound
/// to; <see cref="UnixSocket.Listen"/> takes the one for its path instead of binding a new socket, so a
/// transport needs no configuration to use it and QEMU may connect before vism has started.
/// </summary>
public static class InheritedSockets
{
    /// <summary>The first inherited descriptor (sd_listen_fds).</summary>
    public const int ListenFdsStart = 3;

    private static readonly Lock Gate = new();
    private static readonly Dictionary<string, SafeFileHandle> ByPath = new(StringComparer.Ordinal);

    /// <summary>Takes the sockets systemd passed to this process (once; the variables are then
    /// removed so children do not see them). Descriptors that are not listening Unix sockets with a
    /// path are closed and reported.</summary>
    /// <returns>The adopted socket paths, and a line per descriptor that was refused.</returns>
    public static (IReadOnlyList<string> Paths, IReadOnlyList<string> Refused) AdoptFromEnvironment()
    {
        var paths = new List<string>();
        var refused = new List<string>();
        string? pid = Environment.GetEnvironmentVariable("LISTEN_PID");
        string? count = Environment.GetEnvironmentVariable("LISTEN_FDS");
        Environment.SetEnvironmentVariable("LISTEN_PID", null);
        Environment.SetEnvironmentVariable("LISTEN_FDS", null);
        Environment.SetEnvironmentVariable("LISTEN_FDNAMES", null);
        if (pid is null || count is null
            || !int.TryParse(pid, NumberStyles.None, CultureInfo.InvariantCulture, out int p) || p != Environment.ProcessId
            || !int.TryParse(count, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n is < 1 or > 4096)
            return (paths, refused);
        for (int fd = ListenFdsStart; fd < ListenFdsStart + n; fd++)
        {
            var handle = new SafeFileHandle(fd, ownsHandle: true);
            string? path = BoundPath(fd);
            if (path is null)
            {
                refused.Add($"inherited descriptor {fd} is not a Unix socket bound to a path; closed");
                handle.Dispose();
                continue;
            }
            Syscall.fcntl(fd, FcntlCommand.F_SETFD, 1 /* FD_CLOEXEC */);
            Add(path, handle);
            paths.Add(path);
        }
        return (paths, refused);
    }

    /// <summary>Offers a listening socket for <paramref name="path"/> (ownership passes to this registry).</summary>
    public static void Add(string path, SafeFileHandle listener)
    {
        lock (Gate)
        {
            if (ByPath.Remove(Path.GetFullPath(path), out SafeFileHandle? old)) old.Dispose();
            ByPath[Path.GetFullPath(path)] = listener;
        }
    }

    /// <summary>Takes the inherited listening socket bound to <paramref name="path"/>, if there is one.</summary>
    public static SafeFileHandle? TryTake(string path)
    {
        lock (Gate)
            return ByPath.Remove(Path.GetFullPath(path), out SafeFileHandle? handle) ? handle : null;
    }

    /// <summary>The path a Unix socket is bound to; null for another kind of descriptor or an unnamed socket.</summary>
    public static unsafe string? BoundPath(int fd)
    {
        byte* buffer = stackalloc byte[112];
        uint length = 112;
        if (LibC.getsockname(fd, buffer, ref length) != 0 || length <= 2) return null;
        if (buffer[0] != 1 || buffer[1] != 0) return null; // AF_UNIX, little-endian sa_family
        int end = 2;
        while (end < length && buffer[end] != 0) end++;
        if (end == 2) return null; // abstract or unnamed
        return Encoding.UTF8.GetString(buffer + 2, end - 2);
    }
}
