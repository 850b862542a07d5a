using Microsoft.Win32.SafeHandles;
using Vism.Native;

namespace Vism.VhostUser;

/// <summary>What <see cref="MessageFramer.TryRead"/> found.</summary>
public enum ReadStatus
{
    /// <summary>A whole message is buffered: <see cref="MessageFramer.Header"/>,
    /// <see cref="MessageFramer.Payload"/> and <see cref="MessageFramer.Fds"/> are valid.</summary>
    Message,

    /// <summary>A non-blocking socket has no more bytes now; a partial message stays buffered.</summary>
    WouldBlock,

    /// <summary>The peer closed the stream (a partial message is discarded and its fds closed).</summary>
    Closed,
}

/// <summary>The stream broke the framing rules (bad version, oversized payload): the connection
/// cannot be trusted to stay in sync and must be closed.</summary>
/// <param name="message">What was wrong.</param>
public sealed class VhostUserProtocolException(string message) : Exception(message);

/// <summary>
/// Reassembles vhost-user messages from a Unix stream socket, blocking or not. The header is read
/// on its own and then exactly the payload, so one recvmsg never spans two messages and every fd
/// (SCM_RIGHTS, received close-on-exec) belongs to the message being read. Fds the handler does not
/// take out of <see cref="Fds"/> are closed when the next message is read or the framer is disposed.
/// </summary>
public sealed class MessageFramer : IDisposable
{
    private readonly UnixSocket _socket;
    private readonly byte[] _header = new byte[VhostUserConstants.HeaderSize];
    private readonly byte[] _payload;
    private readonly List<SafeFileHandle> _fds = new(VhostUserConstants.MaxFds);
    private int _headerHave;
    private int _payloadHave;
    private bool _delivered;

    /// <summary>Creates a framer over <paramref name="socket"/> (not owned).</summary>
    /// <param name="socket">The connected socket.</param>
    /// <param name="maxPayload">Largest payload accepted; a larger size is a framing error.</param>
    public MessageFramer(UnixSocket socket, int maxPayload)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxPayload);
        _socket = socket;
        _payload = new byte[maxPayload];
    }

    /// <summary>Header of the current message.</summary>
    public MessageHeader Header { get; private set; }

    /// <summary>Payload of the current message (valid until the next <see cref="TryRead"/>).</summary>
    public ReadOnlySpan<byte> Payload => _payload.AsSpan(0, (int)Header.Size);

    /// <summary>Fds that came with the current message. Remove the ones you keep; the rest are closed.</summary>
    public List<SafeFileHandle> Fds => _fds;

    /// <summary>Whether bytes of a message that is not complete yet are buffered.</summary>
    public bool HasPartialMessage => !_delivered && (_headerHave > 0);

    /// <summary>Reads until one whole message is buffered, the socket would block, or the peer closes.</summary>
    /// <returns>What happened.</returns>
    /// <exception cref="VhostUserProtocolException">The header is not a vhost-user header this framer accepts.</exception>
    /// <exception cref="PosixException">The socket failed (including more fds than fit, MSG_CTRUNC).</exception>
    public ReadStatus TryRead()
    {
        if (_delivered) ReleaseCurrent();
        while (true)
        {
            if (_headerHave < _header.Length)
            {
                int n = _socket.Receive(_header.AsSpan(_headerHave), _fds);
                if (n < 0) return ReadStatus.WouldBlock;
                if (n == 0) { ReleaseCurrent(); return ReadStatus.Closed; }
                _headerHave += n;
                if (_headerHave < _header.Length) continue;
                Header = MessageHeader.Read(_header);
                if (!Header.HasValidVersion)
                    throw new VhostUserProtocolException($"request {Header.Request}: header flags 0x{Header.Flags:x} do not carry version 1");
                if (Header.Size > (uint)_payload.Length)
                    throw new VhostUserProtocolException($"request {Header.Request}: payload of {Header.Size} bytes exceeds the {_payload.Length}-byte limit");
                _payloadHave = 0;
            }
            if (_payloadHave < (int)Header.Size)
            {
                int n = _socket.Receive(_payload.AsSpan(_payloadHave, (int)Header.Size - _payloadHave), _fds);
                if (n < 0) return ReadStatus.WouldBlock;
                if (n == 0) { ReleaseCurrent(); return ReadStatus.Closed; }
                _payloadHave += n;
                if (_payloadHave < (int)Header.Size) continue;
            }
            _delivered = true;
            return ReadStatus.Message;
        }
    }

    /// <summary>Closes the fds of the current message the handler did not take and forgets it.</summary>
    public void ReleaseCurrent()
    {
        foreach (SafeFileHandle fd in _fds) fd.Dispose();
        _fds.Clear();
        _headerHave = 0;
        _payloadHave = 0;
        _delivered = false;
    }

    /// <summary>Closes any fds still held (the socket is not owned).</summary>
    public void Dispose() => ReleaseCurrent();
}
