using Mono.Unix.Native;

namespace Vism.Testing;

/// <summary>A client that waits for a socket file to appear and connects at once, as QEMU's
/// reconnect or a script does: for tests that a listener's path never appears before it listens.</summary>
public static class SocketWatch
{
    /// <summary>Spins until <paramref name="path"/> exists, then connects once: the errno of that
    /// connect (0 when it succeeded) and the mode the file had when it was first seen;
    /// <see cref="Errno.ETIMEDOUT"/> when the file did not appear within 10 s.</summary>
    public static (Errno Error, uint Mode) ConnectOnceItExists(string path)
    {
        long deadline = Environment.TickCount64 + 10_000;
        while (Environment.TickCount64 < deadline)
        {
            if (Syscall.lstat(path, out Stat st) != 0) continue;
            int fd = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM, 0);
            try
            {
                int rc = Syscall.connect(fd, new SockaddrUn(path));
                return (rc == 0 ? 0 : Stdlib.GetLastError(), (uint)st.st_mode);
            }
            finally
            {
                Syscall.close(fd);
            }
        }
        return (Errno.ETIMEDOUT, 0);
    }
}
