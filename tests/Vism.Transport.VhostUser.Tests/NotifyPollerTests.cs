using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>
/// The poller's adaptive policy, step by step, on a loop whose clock the test advances (the only
/// double here: the NOTIFY window is a real memfd mapping and the device records what it is told).
/// Scans are queued with the loop's <see cref="NotifyScanner"/> on a grid of the interval, so the
/// tests assert when scans happen on that clock.
/// </summary>
public sealed class NotifyPollerTests : IDisposable
{
    private static readonly TimeSpan Fast = TimeSpan.FromMicroseconds(50);
    private static readonly TimeSpan Slow = TimeSpan.FromMicroseconds(800);

    private readonly ManualLoop _loop = new();
    private readonly NotifyScanner _scanner;
    private readonly FakeVirtioDevice _device;
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle _fd = MemFd.Create("poller-test", 4096);
    private readonly Mapping _window;
    private readonly TestCounters _counters = new();
    private NotifyPoller _poller;

    public NotifyPollerTests()
    {
        _scanner = new NotifyScanner(_loop, () => _loop.Now);
        _device = new FakeVirtioDevice(_loop, notifySize: 8) { SlotsInUse = 4 };
        _window = Mapping.Map(_fd, 0, 4096);
        _poller = new NotifyPoller(_device, _window, _scanner, _counters, new NotifyPollPolicy(Fast, Slow, TimeSpan.Zero));
    }

    private void WithHold(TimeSpan hold)
    {
        _poller.Dispose();
        _poller = new NotifyPoller(_device, _window, _scanner, _counters, new NotifyPollPolicy(Fast, Slow, hold));
    }

    public void Dispose()
    {
        _poller.Dispose();
        _window.Dispose();
        _fd.Dispose();
    }

    [Fact]
    public void EmptyScans_DoubleTheIntervalUpToTheSlowOne_AndAHitBringsBackTheFastOne()
    {
        _poller.Activity();
        var scannedAt = new List<int>();
        var intervals = new List<int>();
        for (int i = 0; i < 7; i++)
        {
            scannedAt.Add((int)_loop.FireNext().TotalMicroseconds);
            intervals.Add((int)_poller.Interval.TotalMicroseconds);
        }
        // Each scan lies on the grid of its interval, at most one interval after the previous one.
        Assert.Equal([50, 100, 200, 400, 800, 1600, 2400], scannedAt);
        Assert.Equal([100, 200, 400, 800, 800, 800, 800], intervals);
        Assert.Empty(_device.NotifyWrites);

        _window.Span(3 * 8, 8)[0] = 1; // the driver writes slot 3
        Assert.Equal(3200, (int)_loop.FireNext().TotalMicroseconds); // that scan was due after the slow interval ...
        Assert.Equal([24UL], _device.NotifyWrites.ToArray());
        Assert.Equal(Fast, _loop.PendingDelay); // ... and the next one comes after the fast one
        Assert.Equal(1, _window.Span(3 * 8, 8)[0]); // the device never writes the window
        Assert.Equal(1, _counters.Get("vhost-user.notify-writes"));
        _loop.FireNext();
        Assert.Single(_device.NotifyWrites); // an unchanged slot is not reported again
    }

    [Fact]
    public void Scan_AnyValueAtAnyByteOfASlot_IsOneUpdateZeroIncluded()
    {
        // notify_size 16: the bytes after the first eight count too (issue 14, point 3).
        var device = new FakeVirtioDevice(_loop, notifySize: 16) { SlotsInUse = 2 };
        using var poller = new NotifyPoller(device, _window, _scanner, _counters, new NotifyPollPolicy(Fast, Slow, TimeSpan.Zero));
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
    public void Scan_TheValueASlotAlreadyHolds_IsNotSeenSoADriverMustChangeIt()
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
    public void ResetSnapshot_ClearedWindow_StartsANewSnapshot()
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
    public void Hold_AfterActivityAndAfterEachHit_KeepsTheFastIntervalThatLong()
    {
        WithHold(TimeSpan.FromMicroseconds(200)); // four empty scans at 50 us
        _poller.Activity();
        var intervals = new List<int>();
        for (int i = 0; i < 8; i++)
        {
            _loop.FireNext();
            intervals.Add((int)_poller.Interval.TotalMicroseconds);
        }
        Assert.Equal([50, 50, 50, 50, 100, 200, 400, 800], intervals);

        _window.Span(0, 8)[0] = 1;
        _loop.FireNext(); // the hit
        intervals.Clear();
        for (int i = 0; i < 6; i++)
        {
            _loop.FireNext();
            intervals.Add((int)_poller.Interval.TotalMicroseconds);
        }
        Assert.Equal([50, 50, 50, 50, 100, 200], intervals);
        Assert.Equal([0UL], _device.NotifyWrites.ToArray());
    }

    [Fact]
    public void Activity_DuringASlowInterval_ReschedulesTheScanAtTheFastInterval()
    {
        _poller.Activity();
        while (_loop.PendingDelay < Slow) _loop.FireNext();
        _loop.Advance(TimeSpan.FromMicroseconds(330)); // somewhere inside the slow interval
        TimeSpan slowScanAt = _poller.DueAt;
        _poller.Activity(); // a kick or a new mapping
        Assert.True(_loop.PendingDelay <= Fast, $"next scan in {_loop.PendingDelay}");
        Assert.Equal(1, _loop.LiveTimers);
        long scans = _poller.Scans;
        while (_loop.Now < slowScanAt) _loop.FireNext();
        // Only the scans of the new schedule ran (grid points of 50, 100, 200 us ...): the slow one
        // it replaced, left in the queue, was dropped when its time came.
        Assert.True(_poller.DueAt > slowScanAt);
        Assert.InRange(_poller.Scans - scans, 1, 5);
    }

    [Fact]
    public void Activity_WhileAFastScanIsPending_KeepsThatScan()
    {
        _poller.Activity();
        int scheduled = _loop.Scheduled;
        _poller.Activity();
        Assert.Equal(scheduled, _loop.Scheduled);
        Assert.Equal(1, _loop.LiveTimers);
    }

    [Fact]
    public void Polling_NoSlotInUse_StopsAndRestartsOnActivity()
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
        Assert.True(_loop.PendingDelay <= Fast);
    }

    [Fact]
    public void Stop_LeavesNoTimerAndNoQueuedScan()
    {
        _poller.Activity();
        _poller.Stop();
        Assert.False(_poller.Armed);
        Assert.Equal(0, _loop.LiveTimers);
        Assert.Equal(0, _scanner.Queued);
    }
}
