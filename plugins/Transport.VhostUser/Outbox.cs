using System.Runtime.InteropServices;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.VhostUser;

/// <summary>
/// Sends messages on a non-blocking socket from the loop without ever waiting. A message the socket
/// buffer cannot take at once is queued (its fds duplicated, so the caller may close its own) and
/// retried from a loop timer with back-off; a peer that stops reading for
/// <see cref="StallTimeout"/>, or lets the queue grow past <see cref="MaxBacklog"/>, is reported
/// through the failure callback (the caller then drops the connection). Loop thread only.
/// </summary>
internal sealed class Outbox : IDisposable
{
    public static readonly TimeSpan StallTimeout = TimeSpan.FromSeconds(10);
    public const int MaxBacklog = 1 << 20;

    private readonly UnixSocket _socket;
    private readonly IDeviceLoop _loop;
    private readonly Action<string> _onFailure;
    private readonly Queue<Pending> _queue = new();
    private int _backlog;
    private IDisposable? _timer;
    private int _retryMs;
    private long _stalledSince;
    private bool _failed;

    public Outbox(UnixSocket socket, IDeviceLoop loop, Action<string> onFailure)
    {
        _socket = socket;
        _loop = loop;
        _onFailure = onFailure;
    }

    /// <summary>Messages that were queued because the socket buffer was full (diagnostics).</summary>
    public int Stalls { get; private set; }

    /// <summary>Sends <paramref name="message"/> now, or queues it.</summary>
    /// <returns>False when the outbox has failed (the peer is gone or stuck).</returns>
    public bool Send(byte[] message, SafeHandle? fd = null)
    {
        if (_failed || _socket.Handle.IsClosed) return false;
        if (_queue.Count == 0)
        {
            int n;
            try
            {
                n = _socket.SendNonBlocking(message, fd is null ? default : [fd]);
            }
            catch (PosixException ex)
            {
                Fail($"send failed: {ex.Message}");
                return false;
            }
            if (n == message.Length) return true;
            if (n > 0) fd = null; // the fd travelled with the first byte
            Enqueue(new Pending(message, Math.Max(n, 0), fd is null ? null : Fd.Dup(fd)));
            return true;
        }
        Enqueue(new Pending(message, 0, fd is null ? null : Fd.Dup(fd)));
        return !_failed;
    }

    private void Enqueue(Pending p)
    {
        _queue.Enqueue(p);
        _backlog += p.Data.Length - p.Offset;
        if (_timer is null)
        {
            Stalls++;
            _stalledSince = Environment.TickCount64;
            _retryMs = 1;
            _timer = _loop.Schedule(TimeSpan.FromMilliseconds(_retryMs), Flush);
        }
        if (_backlog > MaxBacklog) Fail($"the peer is not reading: {_backlog} bytes queued");
    }

    private void Flush()
    {
        _timer = null;
        if (_failed) return;
        try
        {
            while (_queue.TryPeek(out Pending? p))
            {
                int n = _socket.SendNonBlocking(p.Data.AsSpan(p.Offset), p.Fd is null ? default : [p.Fd]);
                if (n < 0) break;
                p.Fd?.Dispose();
                p.Fd = null;
                p.Offset += n;
                _backlog -= n;
                if (p.Offset < p.Data.Length) break;
                _queue.Dequeue();
                _stalledSince = Environment.TickCount64;
            }
        }
        catch (PosixException ex)
        {
            Fail($"send failed: {ex.Message}");
            return;
        }
        if (_queue.Count == 0) return;
        if (Environment.TickCount64 - _stalledSince > (long)StallTimeout.TotalMilliseconds)
        {
            Fail($"the peer has not read for {StallTimeout.TotalSeconds:0} s ({_backlog} bytes queued)");
            return;
        }
        _retryMs = Math.Min(_retryMs * 2, 50);
        _timer = _loop.Schedule(TimeSpan.FromMilliseconds(_retryMs), Flush);
    }

    private void Fail(string reason)
    {
        if (_failed) return;
        _failed = true;
        Discard();
        _onFailure(reason);
    }

    private void Discard()
    {
        _timer?.Dispose();
        _timer = null;
        while (_queue.TryDequeue(out Pending? p)) p.Fd?.Dispose();
        _backlog = 0;
    }

    public void Dispose()
    {
        _failed = true;
        Discard();
    }

    private sealed class Pending(byte[] data, int offset, SafeHandle? fd)
    {
        public byte[] Data { get; } = data;
        public int Offset { get; set; } = offset;
        public SafeHandle? Fd { get; set; } = fd;
    }
}
