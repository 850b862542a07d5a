using System.Diagnostics;
using System.Runtime.CompilerServices;
using Vism.Abstractions;

namespace Vism.Transport.VhostUser;

/// <summary>
/// One NOTIFY scanner per device loop: every vhost-user device on the loop has its window polled
/// from this scanner's single loop timer instead of a timer of its own.
/// <list type="bullet">
/// <item>Each <see cref="NotifyPoller"/> keeps its own interval (fast after activity, doubling to
/// slow); the scanner keeps the pollers that are armed in a queue ordered by the moment their next
/// scan is due and one loop timer for the earliest of them. When it fires, every poller due by then
/// is scanned in that one turn.</item>
/// <item>Due times lie on a grid of the poller's interval (multiples of it on the loop's monotonic
/// clock), so pollers with the same interval come due at the same instant: 1,000 idle devices at
/// <c>notify-poll-slow</c> = 50 ms cost 20 wake-ups a second on their loop, not 20,000, and ten
/// devices polled at the fast interval cost one wake-up per fast interval, not ten. A poller's next
/// scan is never later than its interval after the previous one (it may be earlier, on the grid).</item>
/// <item>A poller with no slot in use, a stopped one and a disposed one leave the queue: they cost
/// nothing until their next activity.</item>
/// </list>
/// Loop thread only (the scanner of a loop is created on first use, from the loop's thread).
/// </summary>
internal sealed class NotifyScanner
{
    private static readonly ConditionalWeakTable<IDeviceLoop, NotifyScanner> Scanners = new();

    private readonly IDeviceLoop _loop;
    private readonly Func<TimeSpan> _clock;
    private readonly PriorityQueue<long, long> _dues = new(); // the distinct due times with a bucket
    private readonly Dictionary<long, List<NotifyPoller>> _buckets = new(); // due time -> pollers due then
    private readonly Stack<List<NotifyPoller>> _spare = new();
    private int _queued; // pollers in the buckets
    private IDisposable? _timer;
    private long _timerDue = long.MaxValue;
    private bool _firing;
    private NotifyPoller[] _pollers = []; // every live poller of the loop (busy looks); replaced, never changed in place
    private IDisposable? _busyLook;

    /// <summary>A scanner on <paramref name="loop"/> whose clock is <paramref name="clock"/> (tests
    /// give one they advance; the loop's own timers run on CLOCK_MONOTONIC).</summary>
    public NotifyScanner(IDeviceLoop loop, Func<TimeSpan> clock)
    {
        _loop = loop;
        _clock = clock;
    }

    /// <summary>The scanner of <paramref name="loop"/>, shared by every device on it.</summary>
    public static NotifyScanner For(IDeviceLoop loop) => Scanners.GetValue(loop, l => new NotifyScanner(l, Monotonic));

    private static TimeSpan Monotonic() => Stopwatch.GetElapsedTime(0);

    /// <summary>Now, on the scanner's clock.</summary>
    public TimeSpan Now => _clock();

    /// <summary>Loop timers this scanner has scheduled (diagnostics, tests: the wake-ups it cost).</summary>
    public long TimersScheduled { get; private set; }

    /// <summary>Scans queued (a poller that was made fast again may still have its later scan here).</summary>
    internal int Queued => _queued;

    /// <summary>The first grid point of <paramref name="interval"/> after <paramref name="from"/> and at
    /// most one interval after it.</summary>
    public static long NextGridPoint(long from, TimeSpan interval)
    {
        long step = Math.Max(1, interval.Ticks);
        return (from / step + 1) * step;
    }

    /// <summary>Takes <paramref name="poller"/> into the loop's busy looks: while the loop busy-polls
    /// (after work, <c>[host] busy-poll</c>, see <see cref="IDeviceLoop.OnBusyLook"/>), every poller
    /// that is polling fast (there was activity within its hold time) is scanned at each look, so a
    /// notify written then is routed within a look, without waiting for the doorbell's wake-up or the
    /// fast timer. A loop that does not busy-poll never looks.</summary>
    public void Add(NotifyPoller poller)
    {
        _pollers = [.. _pollers, poller];
        _busyLook ??= _loop.OnBusyLook(BusyLook);
    }

    /// <summary>Drops <paramref name="poller"/> from the busy looks (it was disposed).</summary>
    public void Drop(NotifyPoller poller)
    {
        int at = Array.IndexOf(_pollers, poller);
        if (at >= 0) _pollers = [.. _pollers[..at], .. _pollers[(at + 1)..]];
        if (_pollers.Length > 0) return;
        _busyLook?.Dispose();
        _busyLook = null;
    }

    private bool BusyLook()
    {
        int hits = 0;
        // Over the array as it was when the look began: a routed notify may end a device (a failed
        // event plugin resets it), which disposes its window and replaces the array; a disposed
        // poller is not hot, so it is skipped.
        foreach (NotifyPoller poller in _pollers)
            if (poller.Hot)
                hits += poller.Look();
        return hits > 0;
    }

    /// <summary>Queues <paramref name="poller"/> for a scan at <paramref name="due"/> (clock ticks) and
    /// makes sure the timer fires by then. Pollers due at the same time share one bucket (one entry of
    /// the time queue), so queueing is a dictionary look-up. A scan the poller had queued for later
    /// stays queued and is ignored when its time comes (<see cref="NotifyPoller.Due"/> tells it is no
    /// longer the poller's): no search on the hot path.</summary>
    public void Enqueue(NotifyPoller poller, long due)
    {
        if (!_buckets.TryGetValue(due, out List<NotifyPoller>? bucket))
        {
            bucket = _spare.TryPop(out List<NotifyPoller>? spare) ? spare : [];
            _buckets.Add(due, bucket);
            _dues.Enqueue(due, due);
        }
        bucket.Add(poller);
        _queued++;
        if (_firing || (_timer is not null && due >= _timerDue)) return;
        _timer?.Dispose();
        Arm(due, Now.Ticks);
    }

    /// <summary>Drops the scan <paramref name="poller"/> queued for <paramref name="due"/> (it stopped
    /// or went away: rare, a search of that bucket); with no scan left, the timer too.</summary>
    public void Remove(NotifyPoller poller, long due)
    {
        if (_buckets.TryGetValue(due, out List<NotifyPoller>? bucket) && bucket.Remove(poller))
            _queued--;
        if (_queued > 0 || _firing) return;
        Clear();
    }

    private void Clear()
    {
        _timer?.Dispose();
        _timer = null;
        _timerDue = long.MaxValue;
        foreach (List<NotifyPoller> bucket in _buckets.Values)
        {
            bucket.Clear();
            _spare.Push(bucket);
        }
        _buckets.Clear();
        _dues.Clear();
    }

    private void Arm(long due, long now)
    {
        _timerDue = due;
        TimersScheduled++;
        _timer = _loop.Schedule(TimeSpan.FromTicks(Math.Max(0, due - now)), Fire);
    }

    private void Fire()
    {
        _timer = null;
        _timerDue = long.MaxValue;
        long now = Now.Ticks;
        bool found = false;
        _firing = true;
        try
        {
            while (_dues.TryPeek(out long due, out _) && due <= now)
            {
                _dues.Dequeue();
                if (!_buckets.Remove(due, out List<NotifyPoller>? bucket)) continue;
                _queued -= bucket.Count;
                try
                {
                    // Each may queue its next scan, always after now: never into this bucket.
                    foreach (NotifyPoller poller in bucket)
                        found |= poller.Due(due, now);
                }
                finally
                {
                    bucket.Clear();
                    _spare.Push(bucket);
                }
            }
        }
        finally
        {
            _firing = false;
            if (_queued == 0) Clear();
            else if (_dues.TryPeek(out long next, out _))
                Arm(next, now);
        }
        // Writes found by the timer (no doorbell rang: a QEMU guest, or the loop slept) are work:
        // a busy-polling loop then looks for the next one instead of waiting for the next scan.
        if (found) _loop.FoundWork();
    }
}
