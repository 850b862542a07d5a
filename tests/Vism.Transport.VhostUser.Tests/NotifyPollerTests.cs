using System.Runtime.InteropServices;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>
/// The poller's adaptive policy, step by step, on a loop whose clock the test advances (the only
/// double here: the NOTIFY window is a real memfd mapping and the device records what it is told).
/// </summary>
public sealed class NotifyPollerTests : IDisposable
{
    private static readonly TimeSpan Fast = TimeSpan.FromMicroseconds(50);
    private static readonly TimeSpan Slow = TimeSpan.FromMicroseconds(800);

    private readonly ManualLoop _loop = new();
    private readonly FakeVirtioDevice _device;
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle _fd = MemFd.Create("poller-test", 4096);
    private readonly Mapping _window;
    private readonly TestCounters _counters = new();
    private NotifyPoller _poller;

    public NotifyPollerTests()
    {
        _device = new FakeVirtioDevice(_loop, notifySize: 8) { SlotsInUse = 4 };
        _window = Mapping.Map(_fd, 0, 4096);
        _poller = new NotifyPoller(_device, _window, _loop, _counters, new NotifyPollPolicy(Fast, Slow, TimeSpan.Zero));
    }

    private void WithHold(TimeSpan hold)
    {
        _poller.Dispose();
        _poller = new NotifyPoller(_device, _window, _loop, _counters, new NotifyPollPolicy(Fast, Slow, hold));
    }

    public void Dispose()
    {
        _poller.Dispose();
        _window.Dispose();
        _fd.Dispose();
    }

    [Fact]
    public void EmptyScansDoubleTheIntervalUpToTheSlowOneAndAHitBringsBackTheFastOne()
    {
        _poller.Activity();
        var intervals = new List<TimeSpan>();
        for (int i = 0; i < 7; i++)
            intervals.Add(_loop.FireNext());
        Assert.Equal([50, 100, 200, 400, 800, 800, 800], intervals.Select(t => (int)t.TotalMicroseconds));
        Assert.Empty(_device.NotifyWrites);

        _window.Span(3 * 8, 8)[0] = 1; // the driver writes slot 3
        Assert.Equal(Slow, _loop.FireNext()); // that scan was due after the slow interval ...
        Assert.Equal([24UL], _device.NotifyWrites.ToArray());
        Assert.Equal(Fast, _loop.PendingDelay); // ... and the next one comes after the fast one
        Assert.Equal(1, _window.Span(3 * 8, 8)[0]); // the device never writes the window
        Assert.Equal(1, _counters.Get("vhost-user.notify-writes"));
        _loop.FireNext();
        Assert.Single(_device.NotifyWrites); // an unchanged slot is not reported again
    }

    [Fact]
    public void AnyValueWrittenAtAnyByteOfASlotIsOneUpdateZeroIncluded()
    {
        // notify_size 16: the bytes after the first eight count too (issue 14, point 3).
        var device = new FakeVirtioDevice(_loop, notifySize: 16) { SlotsInUse = 2 };
        using var poller = new NotifyPoller(device, _window, _loop, _counters, new NotifyPollPolicy(Fast, Slow, TimeSpan.Zero));
        var expected = new List<ulong>();
        for (int at = 0; at < 16; at++)
        {
            _window.Span((ulong)(16 + at), 1)[0] = 0x5a; // slot 1, byte `at`
            Assert.Equal(1, poller.Scan());
            _window.Span((ulong)(16 + at), 1)[0] = 0; // back to zero: a change, so another update
            Assert.Equal(1, poller.Scan());
            expected.Add(16);
            expected.Add(16);
        }
        Assert.Equal(0, poller.Scan());
        Assert.Equal(expected, device.NotifyWrites.ToArray());
    }

    [Fact]
    public void RewritingTheValueASlotAlreadyHoldsIsNotSeenSoADriverMustChangeIt()
    {
        _window.Span(0, 8)[0] = 7;
        Assert.Equal(1, _poller.Scan());
        _window.Span(0, 8)[0] = 7; // the same store again: memory does not change
        Assert.Equal(0, _poller.Scan());
        _window.Span(0, 8)[0] = 8; // what vism's frontend does: add one
        Assert.Equal(1, _poller.Scan());
        Assert.Equal([0UL, 0UL], _device.NotifyWrites.ToArray());
    }

    [Fact]
    public void AClearedWindowStartsANewSnapshot()
    {
        _window.Span(8, 8)[0] = 3;
        Assert.Equal(1, _poller.Scan());
        _window.Span(8, 8).Clear(); // the window is cleared for a new start ...
        _poller.ResetSnapshot(); // ... and so is the snapshot: the clearing is no update
        Assert.Equal(0, _poller.Scan());
        _window.Span(8, 8)[0] = 3;
        Assert.Equal(1, _poller.Scan());
    }

    [Fact]
    public void WithAHoldTimeTheIntervalStaysFastThatLongAfterActivityAndAfterEachHit()
    {
        WithHold(TimeSpan.FromMicroseconds(200)); // four empty scans at 50 us
        _poller.Activity();
        var intervals = new List<int>();
        for (int i = 0; i < 8; i++)
            intervals.Add((int)_loop.FireNext().TotalMicroseconds);
        Assert.Equal([50, 50, 50, 50, 50, 100, 200, 400], intervals);

        _window.Span(0, 8)[0] = 1;
        _loop.FireNext(); // the hit
        intervals.Clear();
        for (int i = 0; i < 6; i++)
            intervals.Add((int)_loop.FireNext().TotalMicroseconds);
        Assert.Equal([50, 50, 50, 50, 50, 100], intervals);
        Assert.Equal([0UL], _device.NotifyWrites.ToArray());
    }

    [Fact]
    public void ActivityDuringASlowIntervalReschedulesTheScanAtTheFastInterval()
    {
        _poller.Activity();
        while (_loop.PendingDelay < Slow) _loop.FireNext();
        _poller.Activity(); // a kick or a new mapping
        Assert.Equal(Fast, _loop.PendingDelay);
        Assert.Equal(1, _loop.LiveTimers);
    }

    [Fact]
    public void ActivityWhileAFastScanIsPendingKeepsThatScan()
    {
        _poller.Activity();
        int scheduled = _loop.Scheduled;
        _poller.Activity();
        Assert.Equal(scheduled, _loop.Scheduled);
        Assert.Equal(1, _loop.LiveTimers);
    }

    [Fact]
    public void PollingStopsWhenNoSlotIsInUseAndRestartsOnActivity()
    {
        _poller.Activity();
        _device.SlotsInUse = 0;
        long scans = _poller.Scans;
        _loop.FireNext();
        Assert.Equal(scans, _poller.Scans);
        Assert.False(_poller.Armed);
        Assert.Equal(0, _loop.LiveTimers);

        _device.SlotsInUse = 1;
        _poller.Activity();
        Assert.True(_poller.Armed);
        Assert.Equal(Fast, _loop.PendingDelay);
    }

    /// <summary>A loop run by the test: <see cref="FireNext"/> runs the earliest live timer.</summary>
    private sealed class ManualLoop : IDeviceLoop
    {
        private readonly List<Timer> _timers = [];

        public bool IsOnLoop => true;
        public int Scheduled { get; private set; }
        public int LiveTimers => _timers.Count(t => !t.Cancelled);

        /// <summary>The delay of the one live timer.</summary>
        public TimeSpan PendingDelay => _timers.Single(t => !t.Cancelled).Delay;

        public void Post(Action work) => work();

        public IDisposable WatchReadable(SafeHandle fd, Action onReadable) => throw new NotSupportedException();

        public IDisposable Schedule(TimeSpan due, Action callback)
        {
            Scheduled++;
            var t = new Timer(due, callback);
            _timers.Add(t);
            return t;
        }

        /// <summary>Runs the one live timer and returns the delay it was scheduled with.</summary>
        public TimeSpan FireNext()
        {
            Timer t = _timers.Single(t => !t.Cancelled);
            _timers.Clear();
            t.Callback();
            return t.Delay;
        }

        private sealed class Timer(TimeSpan delay, Action callback) : IDisposable
        {
            public TimeSpan Delay { get; } = delay;
            public Action Callback { get; } = callback;
            public bool Cancelled { get; private set; }
            public void Dispose() => Cancelled = true;
        }
    }
}
