using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using System.Runtime.InteropServices;

namespace Vism.Native;

/// <summary>
/// A Unix stream socket driven as a raw descriptor, with file descriptors passed as SCM_RIGHTS.
/// (.NET's Socket cannot pass descriptors and silently turns the fd non-blocking after async use,
/// so vism's protocols never mix the two.) Received descriptors arrive close-on-exec; a truncated
/// control message (MSG_CTRUNC) is an error, and every received descriptor is owned by exactly one
/// SafeHandle.
/// </summary>
public sealed unsafe class UnixSocket : IDisposable
{
    /// <summary>Most descriptors accepted in one message (the vhost-user limit).</summary>
    public const int MaxFds = 8;

    private UnixSocket(SafeFileHandle handle) => Handle = handle;

    /// <summary>The socket descriptor (owned).</summary>
    public SafeFileHandle Handle { get; }

    /// <summary>Wraps an owned descriptor.</summary>
    public static UnixSocket Adopt(SafeFileHandle handle) => new(handle);

    /// <summary>Whether this listener came from the service manager (<see cref="InheritedSockets"/>): its
    /// file belongs to the manager and is not removed when the listener closes.</summary>
    public bool Inherited { get; private init; }

    /// <summary>Binds and listens on <paramref name="path"/>. A stale socket file nobody listens on
    /// is replaced; a live one is an error (EADDRINUSE). A socket inherited for this path
    /// (<see cref="InheritedSockets"/>) is used instead of binding a new one. The path appears only once
    /// the socket listens with its access set, so a client may connect as soon as it sees the file.</summary>
    /// <param name="path">Socket path.</param>
    /// <param name="backlog">listen(2) backlog.</param>
    /// <param name="access">Owner, group and mode set between bind and listen; null leaves them.</param>
    public static UnixSocket Listen(string path, int backlog = 64, SocketAccess? access = null)
    {
        string full = Path.GetFullPath(path);
        if (InheritedSockets.TryTake(full) is SafeFileHandle inherited)
            return new UnixSocket(inherited) { Inherited = true };
        if (File.Exists(full) || Directory.Exists(full))
        {
            if (new FileInfo(full).Attributes.HasFlag(FileAttributes.Directory))
                throw new IOException($"{full} is a directory");
            if (IsListening(full))
                throw new PosixException($"bind({full}): another process is serving it", Errno.EADDRINUSE);
            File.Delete(full);
        }
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        UnixSocket s = Create();
        string bound = TemporaryName(full);
        if (bound != full) File.Delete(bound); // left by a process of the same pid that died mid-listen
        try
        {
            PosixException.Check(Syscall.bind(Fd.Raw(s.Handle), new SockaddrUn(bound)), $"bind({bound})");
            try
            {
                access?.Apply(bound);
                PosixException.Check(Syscall.listen(Fd.Raw(s.Handle), backlog), $"listen({full})");
                if (bound != full)
                    PosixException.Check(Syscall.rename(bound, full), $"rename({bound}, {full})");
            }
            catch
            {
                File.Delete(bound);
                throw;
            }
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Where a listener for <paramref name="full"/> binds before it is ready: a hidden name in the same
    /// directory, renamed onto <paramref name="full"/> once the socket listens with its owner and mode
    /// set. A client that waits for the path to appear (QEMU's reconnect, a script, a test) so never
    /// finds a file nobody listens on yet (ECONNREFUSED), nor one with the default mode. A path so long
    /// that the hidden name would not fit in <c>sun_path</c> is bound in place.
    /// </summary>
    private static string TemporaryName(string full)
    {
        string hidden = Path.Combine(Path.GetDirectoryName(full)!,
            FormattableString.Invariant($".vism-{Environment.ProcessId:x}-{Interlocked.Increment(ref s_bindings):x}"));
        return System.Text.Encoding.UTF8.GetByteCount(hidden) < MaxPathBytes ? hidden : full;
    }

    private static int s_bindings;

    /// <summary>sun_path's size on Linux, the terminating NUL included.</summary>
    private const int MaxPathBytes = 108;

    /// <summary>Connects to a listening socket.</summary>
    public static UnixSocket Connect(string path)
    {
        UnixSocket s = Create();
        try
        {
            PosixException.Check(Syscall.connect(Fd.Raw(s.Handle), new SockaddrUn(Path.GetFullPath(path))), $"connect({path})");
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    /// <summary>A connected pair (socketpair).</summary>
    public static (UnixSocket, UnixSocket) Pair()
    {
        PosixException.Check(Syscall.socketpair(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM,
            UnixSocketFlags.SOCK_CLOEXEC, (UnixSocketProtocol)0, out int a, out int b), "socketpair");
        return (new UnixSocket(Fd.Own(a)), new UnixSocket(Fd.Own(b)));
    }

    /// <summary>Accepts one connection, or returns null when none is pending on a non-blocking listener.</summary>
    public UnixSocket? Accept(bool nonBlocking = false)
    {
        var flags = UnixSocketFlags.SOCK_CLOEXEC | (nonBlocking ? UnixSocketFlags.SOCK_NONBLOCK : 0);
        int fd = Syscall.accept4(Fd.Raw(Handle), new SockaddrUn(), flags);
        if (fd < 0)
        {
            Errno e = Stdlib.GetLastError();
            if (e is Errno.EAGAIN or Errno.EINTR or Errno.ECONNABORTED) return null;
            throw new PosixException("accept4", e);
        }
        return new UnixSocket(Fd.Own(fd));
    }

    /// <summary>Sends all of <paramref name="data"/>; <paramref name="fds"/> travel with the first byte.
    /// Works on blocking sockets; on a non-blocking socket a full buffer is waited out with poll.</summary>
    public void Send(ReadOnlySpan<byte> data, ReadOnlySpan<SafeHandle> fds = default)
    {
        int sent = 0;
        bool fdsSent = fds.Length == 0;
        while (sent < data.Length || !fdsSent)
        {
            int n = SendNonBlocking(data[sent..], fdsSent ? default : fds);
            if (n < 0) { WaitWritable(); continue; }
            fdsSent = true;
            sent += n;
        }
    }

    /// <summary>
    /// One sendmsg that never waits (MSG_DONTWAIT): sends as much of <paramref name="data"/> as the
    /// socket buffer takes; <paramref name="fds"/> travel with the first byte, so they are sent
    /// exactly when the result is not negative. For loops that must never block.
    /// </summary>
    /// <returns>Bytes sent (possibly fewer than asked), or -1 when the buffer is full (EAGAIN).</returns>
    /// <exception cref="PosixException">On errors such as EPIPE (peer gone).</exception>
    public int SendNonBlocking(ReadOnlySpan<byte> data, ReadOnlySpan<SafeHandle> fds = default)
    {
        if (fds.Length > MaxFds) throw new ArgumentException($"at most {MaxFds} descriptors per message", nameof(fds));
        if (data.IsEmpty) throw new ArgumentException("descriptors need at least one byte to travel with", nameof(data));
        var added = new bool[fds.Length];
        try
        {
            for (int i = 0; i < fds.Length; i++) fds[i].DangerousAddRef(ref added[i]);
            while (true)
            {
                long n;
                fixed (byte* p = data)
                {
                    var msg = new Msghdr
                    {
                        msg_iov = [new Iovec { iov_base = (nint)p, iov_len = (ulong)data.Length }],
                        msg_iovlen = 1,
                    };
                    if (fds.Length > 0)
                    {
                        msg.msg_control = new byte[Syscall.CMSG_SPACE((ulong)(4 * fds.Length))];
                        msg.msg_controllen = msg.msg_control.Length;
                        var cmsg = new Cmsghdr
                        {
                            cmsg_len = (long)Syscall.CMSG_LEN((ulong)(4 * fds.Length)),
                            cmsg_level = UnixSocketProtocol.SOL_SOCKET,
                            cmsg_type = UnixSocketControlMessage.SCM_RIGHTS,
                        };
                        long at = Syscall.CMSG_FIRSTHDR(msg);
                        cmsg.WriteToBuffer(msg, at);
                        long dataAt = Syscall.CMSG_DATA(msg, at);
                        for (int i = 0; i < fds.Length; i++)
                            BinaryPrimitives.WriteInt32LittleEndian(msg.msg_control.AsSpan((int)dataAt + 4 * i), (int)fds[i].DangerousGetHandle());
                    }
                    n = Syscall.sendmsg(Fd.Raw(Handle), msg, MessageFlags.MSG_NOSIGNAL | MessageFlags.MSG_DONTWAIT);
                }
                if (n >= 0) return (int)n;
                Errno e = Stdlib.GetLastError();
                if (e == Errno.EINTR) continue;
                if (e == Errno.EAGAIN) return -1;
                throw new PosixException("sendmsg", e);
            }
        }
        finally
        {
            for (int i = 0; i < fds.Length; i++) if (added[i]) fds[i].DangerousRelease();
        }
    }

    /// <summary>
    /// One recvmsg into <paramref name="buffer"/>. Descriptors that arrive are appended to
    /// <paramref name="fds"/> (or closed at once when it is null).
    /// </summary>
    /// <returns>Bytes read; 0 at end of stream; -1 when a non-blocking socket has nothing (EAGAIN).</returns>
    /// <exception cref="PosixException">On errors, including MSG_CTRUNC (more descriptors than <see cref="MaxFds"/>, or
    /// none could be installed because this process is out of descriptors).</exception>
    public int Receive(Span<byte> buffer, List<SafeFileHandle>? fds)
    {
        int before = fds?.Count ?? 0;
        int n = Receive(buffer, fds, out bool truncated);
        if (truncated)
        {
            if (fds is not null)
            {
                foreach (SafeFileHandle h in fds.Skip(before)) h.Dispose();
                fds.RemoveRange(before, fds.Count - before);
            }
            throw new PosixException("recvmsg: control data truncated (more descriptors than a message may carry, or this process is out of descriptors)", Errno.EMSGSIZE);
        }
        return n;
    }

    /// <summary>
    /// As <see cref="Receive(Span{byte}, List{SafeFileHandle}?)"/>, but MSG_CTRUNC does not throw:
    /// the bytes are read and the descriptors that did arrive are handed over as usual, and
    /// <paramref name="truncated"/> says that descriptors the peer sent were lost (it sent more than
    /// <see cref="MaxFds"/>, or this process could not install them: out of descriptors). For a
    /// protocol reader that can refuse that one message and go on.
    /// </summary>
    /// <returns>As the other overload.</returns>
    public int Receive(Span<byte> buffer, List<SafeFileHandle>? fds, out bool truncated)
    {
        truncated = false;
        while (true)
        {
            long n;
            var msg = new Msghdr();
            fixed (byte* p = buffer)
            {
                msg.msg_iov = [new Iovec { iov_base = (nint)p, iov_len = (ulong)buffer.Length }];
                msg.msg_iovlen = 1;
                msg.msg_control = new byte[Syscall.CMSG_SPACE(4 * MaxFds)];
                msg.msg_controllen = msg.msg_control.Length;
                n = Syscall.recvmsg(Fd.Raw(Handle), msg, MessageFlags.MSG_CMSG_CLOEXEC);
            }
            if (n < 0)
            {
                Errno e = Stdlib.GetLastError();
                if (e == Errno.EINTR) continue;
                if (e == Errno.EAGAIN) return -1;
                throw new PosixException("recvmsg", e);
            }
            var received = new List<SafeFileHandle>();
            if (msg.msg_controllen > 0)
            {
                for (long at = Syscall.CMSG_FIRSTHDR(msg); at != -1; at = Syscall.CMSG_NXTHDR(msg, at))
                {
                    Cmsghdr c = Cmsghdr.ReadFromBuffer(msg, at);
                    if (c.cmsg_level != UnixSocketProtocol.SOL_SOCKET || c.cmsg_type != UnixSocketControlMessage.SCM_RIGHTS)
                        continue;
                    long dataAt = Syscall.CMSG_DATA(msg, at);
                    long count = (c.cmsg_len - (long)Syscall.CMSG_LEN(0)) / 4;
                    for (int i = 0; i < count; i++)
                        received.Add(Fd.Own(BinaryPrimitives.ReadInt32LittleEndian(msg.msg_control.AsSpan((int)dataAt + 4 * i))));
                }
            }
            truncated = (msg.msg_flags & MessageFlags.MSG_CTRUNC) != 0;
            if (fds is null)
                foreach (SafeFileHandle h in received) h.Dispose();
            else
                fds.AddRange(received);
            return (int)n;
        }
    }

    /// <summary>Blocking: reads exactly <paramref name="buffer"/>.Length bytes (descriptors from any part are collected).</summary>
    /// <returns>False on end of stream before the first byte; throws on a stream that ends mid-buffer.</returns>
    public bool ReceiveExactly(Span<byte> buffer, List<SafeFileHandle>? fds)
    {
        int got = 0;
        while (got < buffer.Length)
        {
            int n = Receive(buffer[got..], fds);
            if (n == 0)
            {
                if (got == 0) return false;
                throw new EndOfStreamException($"peer closed after {got} of {buffer.Length} bytes");
            }
            if (n < 0) { WaitReadable(-1); continue; }
            got += n;
        }
        return true;
    }

    /// <summary>Waits until readable; returns false on timeout.</summary>
    public bool WaitReadable(int timeoutMs)
    {
        var fds = new[] { new Pollfd { fd = Fd.Raw(Handle), events = PollEvents.POLLIN } };
        while (true)
        {
            int rc = Syscall.poll(fds, 1, timeoutMs);
            if (rc >= 0) return rc > 0;
            if (Stdlib.GetLastError() != Errno.EINTR) throw PosixException.FromLastError("poll");
        }
    }

    private void WaitWritable()
    {
        var fds = new[] { new Pollfd { fd = Fd.Raw(Handle), events = PollEvents.POLLOUT } };
        Syscall.poll(fds, 1, 1000);
    }

    /// <summary>Shuts both directions down (wakes a peer blocked on it) without closing the descriptor.</summary>
    public void Shutdown()
    {
        if (!Handle.IsClosed) Syscall.shutdown(Fd.Raw(Handle), ShutdownOption.SHUT_RDWR);
    }

    public void Dispose() => Handle.Dispose();

    private static UnixSocket Create()
    {
        int fd = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM, UnixSocketFlags.SOCK_CLOEXEC, (UnixSocketProtocol)0);
        return new UnixSocket(Fd.Own(PosixException.Check(fd, "socket(AF_UNIX)")));
    }

    private static bool IsListening(string path)
    {
        try
        {
            using UnixSocket probe = Connect(path);
            return true;
        }
        catch (PosixException)
        {
            return false;
        }
    }
}
