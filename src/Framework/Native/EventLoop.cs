using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Microsoft.Extensions.Logging.Abstractions;
using Mono.Unix.Native;
using Vism.Abstractions;

namespace Vism.Native;

/// <summary>How an <see cref="EventLoop"/> waits for its next timer.</summary>
public enum LoopTimerMode
{
    /// <summary><see cref="EpollPwait2"/> when the kernel and C library offer it, else <see cref="TimerFd"/>.</summary>
    Auto,

    /// <summary>epoll_pwait2 with a nanosecond timeout (Linux 5.11, glibc 2.35): no extra system call
    /// per timer.</summary>
    EpollPwait2,

    /// <summary>A timerfd in the epoll set, re-armed when the earliest timer changes (one more system
    /// call then); epoll_wait itself waits without a timeout.</summary>
    TimerFd,
}

/// <summary>
/// An epoll loop on one dedicated thread: the implementation of <see cref="IDeviceLoop"/>.
/// Watches are level-triggered and keyed by a registration id (not the fd), so a descriptor
/// number reused after close never reaches a stale callback. Callbacks that throw are logged;
/// the loop keeps running.
/// </summary>
/// <remarks>
/// Timers have nanosecond resolution against CLOCK_MONOTONIC (the clock <see cref="System.Diagnostics.Stopwatch"/>
/// reads): the loop sleeps in epoll_pwait2 with a timespec timeout, or, where that call is missing,
/// in epoll_wait with a timerfd armed for the earliest timer. The loop thread's timer slack is set to
/// <see cref="TimerSlackNs"/>, so the kernel fires a timeout at most that much late for grouping
/// (the default slack is 50 µs). A timer never fires before its due time; timers due at the same
/// time fire in the order they were scheduled. Nothing spins: the thread sleeps until an fd event,
/// posted work or the earliest timer.
/// </remarks>
public sealed class EventLoop : IDeviceLoop, IDisposable
{
    /// <summary>The loop thread's timer slack (PR_SET_TIMERSLACK): how late the kernel may end a
    /// timed wait to group it with other wake-ups.</summary>
    public const long TimerSlackNs = 1_000;

    private const ulong WakeId = 0;
    private const ulong TimerFdId = ulong.MaxValue;
    private const int MaxEvents = 64;

    private readonly ILogger _log;
    private readonly Thread _thread;
    private readonly SafeFileHandle _epoll;
    private readonly SafeFileHandle? _timerFd;
    private readonly EventFd _wake = EventFd.Create();
    private readonly ConcurrentQueue<Action> _posted = new();
    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, Watch> _watches = new();
    private readonly PriorityQueue<TimerEntry, (long Due, long Sequence)> _timers = new(); // loop thread only
    private readonly List<TimerEntry> _due = []; // loop thread only
    private long _timerSequence; // loop thread only
    private long _armedDue = long.MaxValue; // timerfd mode, loop thread only: the expiry the timerfd holds
    private ulong _nextId = 1;
    private int _wakePending;
    private volatile bool _stopping;
    private long _busyPollNs; // read on the loop thread
    private long _lastWorkNs; // loop thread only: when the last work ended (the busy-poll window starts there)
    private bool _timerFoundWork; // loop thread only: a timer of this turn called FoundWork
    private Func<bool>[] _busyLooks = []; // copy-on-write under _lock; read on the loop thread

    /// <summary>Creates the loop and starts its thread.</summary>
    /// <param name="name">The thread's name.</param>
    /// <param name="log">Where failures of callbacks are logged.</param>
    /// <param name="timers">How the loop waits for timers (tests force <see cref="LoopTimerMode.TimerFd"/>).</param>
    public EventLoop(string name, ILogger? log = null, LoopTimerMode timers = LoopTimerMode.Auto)
    {
        Name = name;
        _log = log ?? NullLogger.Instance;
        int ep = LibC.epoll_create1(LibC.EPOLL_CLOEXEC);
        if (ep < 0) throw PosixException.FromPInvoke("epoll_create1");
        _epoll = Fd.Own(ep);
        var ev = new EpollEvent { events = EpollEvents.EPOLLIN, u64 = WakeId };
        PosixException.Check(Syscall.epoll_ctl(ep, EpollOp.EPOLL_CTL_ADD, Fd.Raw(_wake.Handle), ref ev), "epoll_ctl(wake)");
        TimerMode = timers switch
        {
            LoopTimerMode.Auto => HasEpollPwait2(ep) ? LoopTimerMode.EpollPwait2 : LoopTimerMode.TimerFd,
            LoopTimerMode.EpollPwait2 when !HasEpollPwait2(ep) => throw new PlatformNotSupportedException("epoll_pwait2 is not available (Linux 5.11 and glibc 2.35 are needed)"),
            _ => timers,
        };
        if (TimerMode == LoopTimerMode.TimerFd)
        {
            int tfd = LibC.timerfd_create(LibC.CLOCK_MONOTONIC, LibC.TFD_NONBLOCK | LibC.TFD_CLOEXEC);
            if (tfd < 0) throw PosixException.FromPInvoke("timerfd_create");
            _timerFd = Fd.Own(tfd);
            ev = new EpollEvent { events = EpollEvents.EPOLLIN, u64 = TimerFdId };
            PosixException.Check(Syscall.epoll_ctl(ep, EpollOp.EPOLL_CTL_ADD, tfd, ref ev), "epoll_ctl(timerfd)");
        }
        _thread = new Thread(Run) { IsBackground = true, Name = name };
        _thread.Start();
    }

    /// <summary>The loop's thread name.</summary>
    public string Name { get; }

    /// <summary>How this loop waits for its timers (never <see cref="LoopTimerMode.Auto"/>).</summary>
    public LoopTimerMode TimerMode { get; }

    /// <inheritdoc />
    public bool IsOnLoop => Thread.CurrentThread == _thread;

    /// <summary>Busy polling: after an fd event or posted work, the loop keeps checking for more
    /// (epoll with a zero timeout, yielding the core between checks) for this long before it sleeps,
    /// so work that follows within that time costs no wake-up. Zero (the default) sleeps at once.
    /// The cost is up to this much CPU after every burst of work; timers alone do not extend it, so an
    /// idle loop does not spin. Any thread may set it; it applies from the loop's next wait.</summary>
    public TimeSpan BusyPoll
    {
        get => TimeSpan.FromTicks(Interlocked.Read(ref _busyPollNs) / 100);
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value.Ticks);
            Interlocked.Exchange(ref _busyPollNs, value.Ticks * 100);
        }
    }

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
    /// <remarks>The delay counts from this call, with the resolution of <see cref="TimeSpan"/> (100 ns).
    /// On the loop thread the timer is queued at once; from another thread it is queued by a posted
    /// work item.</remarks>
    public IDisposable Schedule(TimeSpan due, Action callback)
    {
        ArgumentNullException.ThrowIfNull(callback);
        var entry = new TimerEntry(callback, DueAt(NowNs, due));
        if (IsOnLoop) Enqueue(entry);
        else Post(() => Enqueue(entry));
        return entry;
    }

    private void Enqueue(TimerEntry entry) => _timers.Enqueue(entry, (entry.Due, _timerSequence++));

    /// <summary>The monotonic time <paramref name="delay"/> after <paramref name="now"/> (ns), saturating.</summary>
    internal static long DueAt(long now, TimeSpan delay)
    {
        long ticks = Math.Max(0, delay.Ticks);
        const long NsPerTick = 1_000_000_000 / TimeSpan.TicksPerSecond;
        return ticks > (long.MaxValue - 1 - now) / NsPerTick ? long.MaxValue - 1 : now + ticks * NsPerTick;
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

    /// <summary>Nanoseconds of CLOCK_MONOTONIC (what Stopwatch reads on Linux, and what epoll_pwait2
    /// and timerfds count against). Not Environment.TickCount64: that reads CLOCK_MONOTONIC_COARSE,
    /// which advances in kernel ticks (4 ms at HZ=250).</summary>
    internal static long NowNs
    {
        get
        {
            long ts = System.Diagnostics.Stopwatch.GetTimestamp();
            return NanosecondClock ? ts : (long)((Int128)ts * 1_000_000_000 / System.Diagnostics.Stopwatch.Frequency);
        }
    }

    private static readonly bool NanosecondClock = System.Diagnostics.Stopwatch.Frequency == 1_000_000_000;

    private static unsafe bool HasEpollPwait2(int epfd)
    {
        byte* events = stackalloc byte[16];
        var zero = new LibC.Timespec();
        try
        {
            if (LibC.epoll_pwait2(epfd, events, 1, &zero, null) >= 0) return true;
            Errno errno = NativeConvert.ToErrno(Marshal.GetLastPInvokeError());
            return errno is not (Errno.ENOSYS or Errno.EPERM);
        }
        catch (EntryPointNotFoundException)
        {
            return false;
        }
    }

    private unsafe void Run()
    {
        SynchronizationContext.SetSynchronizationContext(new LoopSynchronizationContext(this));
        if (LibC.prctl(LibC.PR_SET_TIMERSLACK, TimerSlackNs, 0, 0, 0) != 0)
            _log.LogWarning("{Loop}: cannot set the timer slack: {Error}", Name, PosixException.Describe(NativeConvert.ToErrno(Marshal.GetLastPInvokeError())));
        int size = LibC.EpollEventSize, dataOffset = LibC.EpollDataOffset;
        byte* events = (byte*)NativeMemory.Alloc((nuint)(MaxEvents * size));
        try
        {
            int epfd = Fd.Raw(_epoll);
            while (!_stopping)
            {
                int n = Wait(epfd, events);
                bool worked = n > 0 || !_posted.IsEmpty;
                if (n < 0)
                {
                    Errno e = NativeConvert.ToErrno(Marshal.GetLastPInvokeError());
                    if (e == Errno.EINTR) continue;
                    if (_stopping) return; // disposed from a callback on this thread: the epoll fd is gone
                    _log.LogCritical("{Loop}: waiting failed: {Errno}; the loop stops", Name, e);
                    return;
                }
                for (int i = 0; i < n && !_stopping; i++) // a callback may dispose the loop: its fds are then closed
                {
                    ulong id = *(ulong*)(events + i * size + dataOffset);
                    if (id == WakeId)
                    {
                        _wake.Drain();
                        Volatile.Write(ref _wakePending, 0);
                        continue;
                    }
                    if (id == TimerFdId)
                    {
                        DrainTimerFd();
                        continue;
                    }
                    Watch? w;
                    lock (_lock) _watches.TryGetValue(id, out w);
                    if (w is not null) Invoke(w.Callback);
                }
                RunPosted();
                _timerFoundWork = false;
                RunTimers();
                // The busy-poll window starts when the work is done: work that took longer than the
                // window (a slow request, a JIT pause) is still followed by polling. A timer counts
                // only when it says it found work (FoundWork): idle periodic timers start no polling.
                if (worked || _timerFoundWork) _lastWorkNs = NowNs;
            }
        }
        finally
        {
            NativeMemory.Free(events);
        }
    }

    /// <inheritdoc />
    /// <remarks>Ignored off the loop thread (only a timer callback of this loop may say so).</remarks>
    public void FoundWork()
    {
        if (IsOnLoop) _timerFoundWork = true;
    }

    /// <inheritdoc />
    public IDisposable OnBusyLook(Func<bool> look)
    {
        ArgumentNullException.ThrowIfNull(look);
        lock (_lock) _busyLooks = [.. _busyLooks, look];
        return new BusyLookRegistration(this, look);
    }

    /// <summary>One turn of busy polling: every registered look runs; true when one found work.</summary>
    private bool RunBusyLooks()
    {
        Func<bool>[] looks = Volatile.Read(ref _busyLooks);
        bool found = false;
        foreach (Func<bool> look in looks)
        {
            try
            {
                if (look())
                    found = true;
            }
            catch (Exception ex)
            {
                _log.LogError(ex, "{Loop}: a busy-poll look threw", Name);
            }
        }
        return found;
    }

    private sealed class BusyLookRegistration(EventLoop loop, Func<bool> look) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
            lock (loop._lock)
            {
                int at = Array.IndexOf(loop._busyLooks, look);
                if (at >= 0) loop._busyLooks = [.. loop._busyLooks[..at], .. loop._busyLooks[(at + 1)..]];
            }
        }
    }

    /// <summary>Sleeps until an fd event, posted work, or the earliest timer's due time.</summary>
    private unsafe int Wait(int epfd, byte* events)
    {
        long due = EarliestDue();
        bool immediate = !_posted.IsEmpty;
        long busy = Volatile.Read(ref _busyPollNs);
        if (!immediate && busy > 0 && NowNs - _lastWorkNs < busy)
        {
            if (RunBusyLooks())
                _lastWorkNs = NowNs;
            Thread.Yield(); // a thread that shares this core runs first (a driver, on a small host)
            immediate = true;
        }
        if (TimerMode == LoopTimerMode.EpollPwait2)
        {
            if (!immediate && due == long.MaxValue)
                return LibC.epoll_pwait2(epfd, events, MaxEvents, null, null);
            var timeout = LibC.Timespec.FromNanoseconds(immediate ? 0 : Math.Max(0, due - NowNs));
            return LibC.epoll_pwait2(epfd, events, MaxEvents, &timeout, null);
        }
        if (!immediate && due != long.MaxValue)
        {
            long remaining = due - NowNs;
            if (remaining <= 0) immediate = true;
            else ArmTimerFd(due, remaining);
        }
        else if (due == long.MaxValue)
        {
            ArmTimerFd(long.MaxValue, 0);
        }
        return LibC.epoll_wait(epfd, events, MaxEvents, immediate ? 0 : -1);
    }

    /// <summary>Timerfd mode: sets the timerfd to expire <paramref name="remaining"/> ns from now (for
    /// the timer due at <paramref name="due"/>), or disarms it (<paramref name="remaining"/> 0), unless
    /// it already holds that expiry.</summary>
    private unsafe void ArmTimerFd(long due, long remaining)
    {
        if (_armedDue == due) return;
        var spec = new LibC.ITimerspec { Value = LibC.Timespec.FromNanoseconds(remaining) };
        if (LibC.timerfd_settime(Fd.Raw(_timerFd!), 0, &spec, null) != 0)
        {
            // Cannot happen with a valid fd and value; the loop then checks its timers every millisecond.
            _log.LogError("{Loop}: timerfd_settime failed: {Error}", Name, PosixException.Describe(NativeConvert.ToErrno(Marshal.GetLastPInvokeError())));
            return;
        }
        _armedDue = due;
    }

    private unsafe void DrainTimerFd()
    {
        ulong expirations;
        if (Syscall.read(Fd.Raw(_timerFd!), &expirations, 8) == 8) _armedDue = long.MaxValue;
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

    /// <summary>Runs every timer due now, in due order (then scheduling order). Timers these callbacks
    /// schedule, even with no delay, run at a later turn, after fd events.</summary>
    private void RunTimers()
    {
        if (_timers.Count == 0) return;
        long now = NowNs;
        while (_timers.TryPeek(out TimerEntry? t, out (long Due, long) key) && key.Due <= now)
        {
            _timers.Dequeue();
            if (!t.Cancelled) _due.Add(t);
        }
        foreach (TimerEntry t in _due)
            if (!t.Cancelled) Invoke(t.Callback); // an earlier callback of this batch may have cancelled it
        _due.Clear();
    }

    /// <summary>The due time of the earliest live timer; cancelled ones at the head are dropped.</summary>
    private long EarliestDue()
    {
        while (_timers.TryPeek(out TimerEntry? t, out (long Due, long) key))
        {
            if (!t.Cancelled) return key.Due;
            _timers.Dequeue();
        }
        return long.MaxValue;
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
        _timerFd?.Dispose();
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

    /// <summary>Starts <paramref name="count"/> loops.</summary>
    /// <param name="count">Loops (threads).</param>
    /// <param name="logs">Where the loops log.</param>
    /// <param name="busyPoll">Each loop's <see cref="EventLoop.BusyPoll"/>.</param>
    public LoopPool(int count, ILoggerFactory? logs = null, TimeSpan busyPoll = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        _loops = new EventLoop[count];
        for (int i = 0; i < count; i++)
            _loops[i] = new EventLoop($"vism-loop-{i}", logs?.CreateLogger("Vism.Loop")) { BusyPoll = busyPoll };
    }

    public IReadOnlyList<EventLoop> Loops => _loops;

    /// <summary>The next loop in round-robin order.</summary>
    public EventLoop Next() => _loops[(int)((uint)Interlocked.Increment(ref _next) % (uint)_loops.Length)];

    public void Dispose()
    {
        foreach (EventLoop l in _loops) l.Dispose();
    }
}
