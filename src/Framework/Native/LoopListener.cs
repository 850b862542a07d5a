using Vism.Abstractions;

namespace Vism.Native;

/// <summary>
/// A listening Unix socket served on a device loop: every pending connection is accepted
/// (non-blocking, close-on-exec) and handed to the owner's callback, which decides whether to keep
/// it. Disposing stops watching, closes the listener and removes the socket file. Shared by the
/// transports so that each keeps only its own policy (one client at a time, what to tell a second).
/// </summary>
public sealed class LoopListener : IDisposable
{
    private readonly IDeviceLoop _loop;
    private readonly Action<UnixSocket> _accepted;
    private readonly Action<PosixException> _acceptFailed;
    private UnixSocket? _socket;
    private IDisposable? _watch;

    private LoopListener(string path, IDeviceLoop loop, Action<UnixSocket> accepted, Action<PosixException> acceptFailed)
    {
        Path = path;
        _loop = loop;
        _accepted = accepted;
        _acceptFailed = acceptFailed;
    }

    /// <summary>The socket path.</summary>
    public string Path { get; }

    /// <summary>Binds <paramref name="path"/> (a stale socket file is replaced, a live one is an
    /// error) and starts accepting on <paramref name="loop"/>. Call on the loop.</summary>
    /// <param name="path">Socket path.</param>
    /// <param name="loop">The loop that accepts and runs the callbacks.</param>
    /// <param name="accepted">Takes ownership of each accepted connection.</param>
    /// <param name="acceptFailed">Told about an accept that failed (the listener keeps serving).</param>
    /// <param name="access">Owner, group and mode of the socket file; null leaves them as created.</param>
    public static LoopListener Start(string path, IDeviceLoop loop, Action<UnixSocket> accepted, Action<PosixException> acceptFailed,
        SocketAccess? access = null)
    {
        var listener = new LoopListener(path, loop, accepted, acceptFailed);
        UnixSocket socket = UnixSocket.Listen(path, access: access);
        try
        {
            Fd.SetNonBlocking(socket.Handle);
            listener._watch = loop.WatchReadable(socket.Handle, listener.OnAcceptable);
        }
        catch
        {
            socket.Dispose();
            if (!socket.Inherited) TryDelete(path);
            throw;
        }
        listener._socket = socket;
        return listener;
    }

    private void OnAcceptable()
    {
        while (_socket is not null)
        {
            UnixSocket? connection;
            try
            {
                connection = _socket.Accept(nonBlocking: true);
            }
            catch (PosixException ex)
            {
                _acceptFailed(ex);
                return;
            }
            if (connection is null) return;
            _accepted(connection);
        }
    }

    /// <summary>Whether the socket was inherited from the service manager (its file is left in place on dispose).</summary>
    public bool Inherited => _socket?.Inherited ?? false;

    /// <summary>Stops accepting, closes the listener and removes the socket file (unless the service
    /// manager owns it). Idempotent.</summary>
    public void Dispose()
    {
        _watch?.Dispose();
        _watch = null;
        if (_socket is null) return;
        bool inherited = _socket.Inherited;
        _socket.Dispose();
        _socket = null;
        if (!inherited) TryDelete(Path);
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
