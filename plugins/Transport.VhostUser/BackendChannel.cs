using System.Runtime.InteropServices;
using Vism.Abstractions;
using Vism.Native;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser;

/// <summary>
/// The backend channel (the socket from SET_BACKEND_REQ_FD): requests from the backend to the
/// frontend (SHMEM_MAP/UNMAP, CONFIG_CHANGE_MSG). Replies are read by watching the socket on the
/// loop, so the main socket keeps being served while a reply is outstanding (QEMU may send
/// ADD_MEM_REG before it answers a SHMEM_MAP). Replies come back in request order; each request
/// that wants one waits at most the configured timeout, after which the channel is declared broken.
/// Loop thread only.
/// </summary>
internal sealed class BackendChannel : IDisposable
{
    private const int MaxReplyPayload = 64;

    private readonly UnixSocket _socket;
    private readonly IDeviceLoop _loop;
    private readonly TimeSpan _replyTimeout;
    private readonly Action<string> _onBroken;
    private readonly MessageFramer _framer;
    private readonly Outbox _outbox;
    private readonly Queue<Pending> _pending = new();
    private IDisposable? _watch;
    private bool _broken;

    /// <param name="socket">The channel (owned); made non-blocking here.</param>
    /// <param name="loop">The device loop.</param>
    /// <param name="replyTimeout">How long a reply may take.</param>
    /// <param name="onBroken">Called once, on the loop, when the channel fails (reason given).</param>
    public BackendChannel(UnixSocket socket, IDeviceLoop loop, TimeSpan replyTimeout, Action<string> onBroken)
    {
        _socket = socket;
        _loop = loop;
        _replyTimeout = replyTimeout;
        _onBroken = onBroken;
        Fd.SetNonBlocking(socket.Handle);
        _framer = new MessageFramer(socket, MaxReplyPayload);
        _outbox = new Outbox(socket, loop, reason => Break($"backend channel: {reason}"));
        _watch = loop.WatchReadable(socket.Handle, OnReadable);
    }

    /// <summary>Requests still waiting for their reply.</summary>
    public int Outstanding => _pending.Count;

    /// <summary>Sends a request. With <paramref name="needReply"/> the task completes with null when
    /// the frontend answered 0, otherwise with the reason it failed; without, it completes at once.</summary>
    public Task<string?> Request(BackendRequest request, byte[] payload, SafeHandle? fd, bool needReply)
    {
        if (_broken) return Task.FromResult<string?>("the backend channel is closed");
        uint flags = VhostUserConstants.Version | (needReply ? VhostUserConstants.NeedReplyFlag : 0);
        Pending? p = null;
        if (needReply)
        {
            p = new Pending(request);
            _pending.Enqueue(p);
            p.Timer = _loop.Schedule(_replyTimeout, () => Break($"no reply to {request} within {_replyTimeout.TotalMilliseconds:0} ms"));
        }
        if (!_outbox.Send(Message.Build((uint)request, flags, payload), fd))
            return Task.FromResult<string?>("the backend channel is closed");
        return p?.Completion.Task ?? Task.FromResult<string?>(null);
    }

    private void OnReadable()
    {
        if (_broken) return;
        try
        {
            while (true)
            {
                ReadStatus status = _framer.TryRead();
                if (status == ReadStatus.WouldBlock) return;
                if (status == ReadStatus.Closed)
                {
                    Break("the frontend closed the backend channel");
                    return;
                }
                OnReply();
                if (_broken) return;
            }
        }
        catch (Exception ex) when (ex is VhostUserProtocolException or PosixException)
        {
            Break($"backend channel: {ex.Message}");
        }
    }

    private void OnReply()
    {
        MessageHeader h = _framer.Header;
        if (!_pending.TryPeek(out Pending? head))
        {
            Break($"unexpected message {h.Request} (flags 0x{h.Flags:x}) on the backend channel: no request is waiting");
            return;
        }
        if (h.Flags != VhostUserConstants.ReplyFlags || h.Request != (uint)head.Request || !U64Payload.TryRead(_framer.Payload, out ulong value))
        {
            Break($"bad reply on the backend channel: request {h.Request}, flags 0x{h.Flags:x}, {h.Size} bytes while {head.Request} waits");
            return;
        }
        if (_framer.Fds.Count > 0)
        {
            Break($"the reply to {head.Request} carried {_framer.Fds.Count} fds");
            return;
        }
        _pending.Dequeue();
        head.Timer?.Dispose();
        head.Completion.TrySetResult(value == 0 ? null : $"the frontend refused {head.Request} (reply {value})");
    }

    private void Break(string reason)
    {
        if (_broken) return;
        _broken = true;
        FailPending(reason);
        _onBroken(reason);
    }

    private void FailPending(string reason)
    {
        while (_pending.TryDequeue(out Pending? p))
        {
            p.Timer?.Dispose();
            p.Completion.TrySetResult(reason);
        }
    }

    public void Dispose()
    {
        _broken = true;
        FailPending("the connection closed");
        _watch?.Dispose();
        _watch = null;
        _outbox.Dispose();
        _framer.Dispose();
        _socket.Dispose();
    }

    private sealed class Pending(BackendRequest request)
    {
        public BackendRequest Request { get; } = request;
        public TaskCompletionSource<string?> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public IDisposable? Timer { get; set; }
    }
}
