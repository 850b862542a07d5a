using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Microsoft.Extensions.Logging.Abstractions;
using Mono.Unix.Native;
using Vism.Abstractions;

namespace Vism.Native;

/// <summary>
/// An epoll loop on one dedicated thread: the implementation of <see cref="IDeviceLoop"/>.
/// Watches are level-triggered and keyed by a registration id (not the fd), so a descriptor
/// number reused after close never reaches a stale callback. Callbacks that throw are logged;
/// the loop keeps running.
/// </summary>
public sealed class EventLoop : IDeviceLoop, IDisposable
{
    private readonly ILogger _log;
    private readonly Thread _thread;
    private readonly SafeFileHandle _epoll;
    private readonly EventFd _wake = EventFd.Create();
    private readonly ConcurrentQueue<Action> _posted = new();
    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, Watch> _watches = new();
    private readonly PriorityQueue<TimerEntry, long> _timers = new(); // loop thread only
    private ulong _nextId = 1;
    private int _wakePending;
    private volatile bool _stopping;

    public EventLoop(string name, ILogger? log = null)
    {
        Name = name;
        _log = log ?? NullLogger.Instance;
        int ep = LibC.epoll_create1(LibC.EPOLL_CLOEXEC);
        if (ep < 0) throw PosixException.FromPInvoke("epoll_create1");
        _epoll = Fd.Own(ep);
        var ev = new EpollEvent { events = EpollEvents.EPOLLIN, u64 = 0 };
        PosixException.Check(Syscall.epoll_ctl(ep, EpollOp.EPOLL_CTL_ADD, Fd.Raw(_wake.Handle), ref ev), "epoll_ctl(wake)");
        _thread = new Thread(Run) { IsBackground = true, Name = name };
        _thread.Start();
    }

    /// <summary>The loop's thread name.</summary>
    public string Name { get; }

    /// <inheritdoc />
    public bool IsOnLoop => Thread.CurrentThread == _thread;

    /// <summary>Number of live fd watches (diagnostics and leak tests).</summary>
    public int WatchCount
    {
        get { lock (_lock) return _watches.Count; }
    }

    /// <inheritdoc />
    public void Post(Action work)
    {
        ArgumentNullException.ThrowIfNull(work);
        _posted.Enqueue(work);
        if (Interlocked.Exchange(ref _wakePending, 1) == 0)
            _wake.Signal();
    }

    /// <inheritdoc />
    public IDisposable WatchReadable(SafeHandle fd, Action onReadable)
    {
        ArgumentNullException.ThrowIfNull(onReadable);
        var watch = new Watch(this, fd, onReadable);
        lock (_lock)
        {
            watch.Id = _nextId++;
            bool added = false;
            fd.DangerousAddRef(ref added);
            watch.RefAdded = added;
            var ev = new EpollEvent { events = EpollEvents.EPOLLIN | EpollEvents.EPOLLRDHUP, u64 = watch.Id };
            int rc = Syscall.epoll_ctl(Fd.Raw(_epoll), EpollOp.EPOLL_CTL_ADD, (int)fd.DangerousGetHandle(), ref ev);
            if (rc < 0)
            {
                Errno e = Stdlib.GetLastError();
                fd.DangerousRelease();
                throw new PosixException("epoll_ctl(ADD)", e);
            }
            _watches.Add(watch.Id, watch);
        }
        return watch;
    }

    /// <inheritdoc />
    public IDisposable Schedule(TimeSpan due, Action callback)
    {
        ArgumentNullException.ThrowIfNull(callback);
        var entry = new TimerEntry(callback, NowMs + Math.Max(0, (long)due.TotalMilliseconds));
        Post(() => _timers.Enqueue(entry, entry.Due));
        return entry;
    }

    private void Remove(Watch watch)
    {
        lock (_lock)
        {
            if (!_watches.Remove(watch.Id)) return;
            if (!watch.Fd.IsClosed)
            {
                var ev = new EpollEvent();
                Syscall.epoll_ctl(Fd.Raw(_epoll), EpollOp.EPOLL_CTL_DEL, (int)watch.Fd.DangerousGetHandle(), ref ev);
            }
            if (watch.RefAdded) watch.Fd.DangerousRelease();
        }
    }

    /// <summary>Milliseconds from a precise monotonic clock. Environment.TickCount64 reads
    /// CLOCK_MONOTONIC_COARSE on Linux, which advances in kernel ticks (4 ms at HZ=250): a 1 ms timer
    /// would fire after up to 4 ms, with epoll_wait(1) spinning until the tick.</summary>
    private static long NowMs => System.Diagnostics.Stopwatch.GetTimestamp() / TicksPerMs;

    private static readonly long TicksPerMs = Math.Max(1, System.Diagnostics.Stopwatch.Frequency / 1000);

    private void Run()
    {
        SynchronizationContext.SetSynchronizationContext(new LoopSynchronizationContext(this));
        var events = new EpollEvent[64];
        int epfd = Fd.Raw(_epoll);
        while (!_stopping)
        {
            int timeout = NextTimeout();
            int n = Syscall.epoll_wait(epfd, events, events.Length, timeout);
            if (n < 0)
            {
                Errno e = Stdlib.GetLastError();
                if (e == Errno.EINTR) continue;
                _log.LogCritical("{Loop}: epoll_wait failed: {Errno}; the loop stops", Name, e);
                return;
            }
            for (int i = 0; i < n; i++)
            {
                ulong id = events[i].u64;
                if (id == 0)
                {
                    _wake.Drain();
                    Volatile.Write(ref _wakePending, 0);
                    continue;
                }
                Watch? w;
                lock (_lock) _watches.TryGetValue(id, out w);
                if (w is not null) Invoke(w.Callback);
            }
            RunPosted();
            RunTimers();
        }
    }

    private void RunPosted()
    {
        // Bounded: work posted while draining runs at the next turn, after fd events.
        int budget = _posted.Count;
        while (budget-- > 0 && _posted.TryDequeue(out Action? work))
            Invoke(work);
        if (!_posted.IsEmpty && Interlocked.Exchange(ref _wakePending, 1) == 0)
            _wake.Signal();
    }

    private void RunTimers()
    {
        long now = NowMs;
        while (_timers.TryPeek(out TimerEntry? t, out long due) && due <= now)
        {
            _timers.Dequeue();
            if (!t.Cancelled) Invoke(t.Callback);
        }
    }

    private int NextTimeout()
    {
        if (!_posted.IsEmpty) return 0;
        while (_timers.TryPeek(out TimerEntry? t, out long due))
        {
            if (t.Cancelled) { _timers.Dequeue(); continue; }
            return (int)Math.Clamp(due - NowMs, 0, int.MaxValue);
        }
        return -1;
    }

    private void Invoke(Action action)
    {
        try
        {
            action();
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "{Loop}: a callback failed", Name);
        }
    }

    /// <summary>Stops the loop and waits for its thread (unless called on it).</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        _wake.Signal();
        if (!IsOnLoop) _thread.Join();
        lock (_lock)
        {
            foreach (Watch w in _watches.Values)
                if (w.RefAdded) w.Fd.DangerousRelease();
            _watches.Clear();
        }
        _epoll.Dispose();
        _wake.Dispose();
    }

    private sealed class Watch(EventLoop loop, SafeHandle fd, Action callback) : IDisposable
    {
        public ulong Id;
        public bool RefAdded;
        public SafeHandle Fd { get; } = fd;
        public Action Callback { get; } = callback;
        public void Dispose() => loop.Remove(this);
    }

    private sealed class TimerEntry(Action callback, long due) : IDisposable
    {
        public Action Callback { get; } = callback;
        public long Due { get; } = due;
        public volatile bool Cancelled;
        public void Dispose() => Cancelled = true;
    }

    private sealed class LoopSynchronizationContext(EventLoop loop) : SynchronizationContext
    {
        public override void Post(SendOrPostCallback d, object? state) => loop.Post(() => d(state));

        public override void Send(SendOrPostCallback d, object? state)
        {
            if (loop.IsOnLoop) d(state);
            else loop.InvokeAsync(() => d(state)).GetAwaiter().GetResult();
        }

        public override SynchronizationContext CreateCopy() => this;
    }
}

/// <summary>A fixed pool of loops; devices are spread over them round-robin.</summary>
public sealed class LoopPool : IDisposable
{
    private readonly EventLoop[] _loops;
    private int _next;

    public LoopPool(int count, ILoggerFactory? logs = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        _loops = new EventLoop[count];
        for (int i = 0; i < count; i++)
            _loops[i] = new EventLoop($"vism-loop-{i}", logs?.CreateLogger("Vism.Loop"));
    }

    public IReadOnlyList<EventLoop> Loops => _loops;

    /// <summary>The next loop in round-robin order.</summary>
    public EventLoop Next() => _loops[(int)((uint)Interlocked.Increment(ref _next) % (uint)_loops.Length)];

    public void Dispose()
    {
        foreach (EventLoop l in _loops) l.Dispose();
    }
}
