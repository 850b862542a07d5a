using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>
/// One NOTIFY scanner per loop for many devices: each device has its own real memfd NOTIFY window
/// (mapped, written through the mapping as a driver would); the scanner's one timer serves them all.
/// </summary>
public sealed class NotifyScannerTests : IDisposable
{
    private const ulong SlotSize = 8;
    private static readonly TimeSpan Fast = TimeSpan.FromMicroseconds(50);
    private static readonly TimeSpan Slow = TimeSpan.FromMilliseconds(5);

    private readonly List<Window> _windows = [];
    private readonly TestCounters _counters = new();

    private sealed record Window(SafeFileHandle Fd, Mapping Map, FakeVirtioDevice Device, NotifyPoller Poller) : IDisposable
    {
        public void Write(int slot) => Map.Span((ulong)slot * SlotSize, 1)[0]++;

        public void Dispose()
        {
            Poller.Dispose();
            Map.Dispose();
            Fd.Dispose();
        }
    }

    private Window Add(IDeviceLoop loop, NotifyScanner scanner, int slotsInUse, TimeSpan hold = default)
    {
        SafeFileHandle fd = MemFd.Create($"scanner-test-{_windows.Count}", 4096);
        Mapping map = Mapping.Map(fd, 0, 4096);
        var device = new FakeVirtioDevice(loop, notifySize: SlotSize, name: $"dev{_windows.Count}") { SlotsInUse = slotsInUse };
        var w = new Window(fd, map, device, new NotifyPoller(device, map, scanner, _counters, new NotifyPollPolicy(Fast, Slow, hold)));
        _windows.Add(w);
        return w;
    }

    public void Dispose()
    {
        foreach (Window w in _windows) w.Dispose();
    }

    /// <summary>Fires the manual loop's timer until its clock passes <paramref name="until"/>.</summary>
    private static int RunUntil(ManualLoop loop, TimeSpan until)
    {
        int fired = 0;
        while (loop.LiveTimers == 1 && loop.Now + loop.PendingDelay <= until)
        {
            loop.FireNext();
            fired++;
            Assert.True(loop.LiveTimers <= 1, "the scanner holds one timer, whatever the number of devices");
        }
        return fired;
    }

    [Fact]
    public void Scanner_AWriteInAnySlotOfAnyOfManyDevices_IsReportedOnceToThatDeviceOnly()
    {
        var loop = new ManualLoop();
        var scanner = new NotifyScanner(loop, () => loop.Now);
        for (int i = 0; i < 64; i++)
        {
            Add(loop, scanner, slotsInUse: 1 + i % 8).Poller.Activity();
            loop.Advance(TimeSpan.FromMicroseconds(37)); // activity at scattered moments
        }
        RunUntil(loop, loop.Now + 20 * Slow); // everyone backed off to the slow interval
        Assert.All(_windows, w => Assert.Equal(Slow, w.Poller.Interval));

        var rng = new Random(15);
        for (int round = 0; round < 40; round++)
        {
            Window target = _windows[rng.Next(_windows.Count)];
            int slot = rng.Next(target.Device.SlotsInUse);
            target.Write(slot);
            RunUntil(loop, loop.Now + Slow); // one slow interval is enough to find it ...
            Assert.Equal([(ulong)slot * SlotSize], target.Device.NotifyWrites.ToArray());
            RunUntil(loop, loop.Now + 4 * Slow); // ... and it is not reported again
            Assert.Single(target.Device.NotifyWrites);
            Assert.All(_windows.Where(w => w != target), w => Assert.Empty(w.Device.NotifyWrites));
            target.Device.NotifyWrites.Clear();
        }
        Assert.Equal(40, _counters.Get("vhost-user.notify-writes"));
    }

    [Fact]
    public void Scanner_WhileTheLoopBusyPolls_EachLookScansTheActiveWindowsOnly()
    {
        var loop = new ManualLoop();
        var scanner = new NotifyScanner(loop, () => loop.Now);
        Window active = Add(loop, scanner, slotsInUse: 4, hold: TimeSpan.FromMilliseconds(1));
        Window idle = Add(loop, scanner, slotsInUse: 4);
        Window unused = Add(loop, scanner, slotsInUse: 0);
        Assert.Equal(1, loop.LookCount); // one look for the loop, whatever the number of devices
        idle.Poller.Activity();
        RunUntil(loop, loop.Now + 20 * Slow); // the idle one backs off to the slow interval
        Assert.Equal(Slow, idle.Poller.Interval);
        active.Poller.Activity();
        unused.Poller.Activity();

        // A write in the active window is routed by the next look: no timer fires.
        Assert.False(loop.Look());
        active.Write(2);
        idle.Write(1);
        unused.Write(0);
        Assert.True(loop.Look());
        Assert.Equal([2 * SlotSize], active.Device.NotifyWrites.ToArray());
        Assert.Empty(idle.Device.NotifyWrites); // backed off: left to its slow scan
        Assert.Empty(unused.Device.NotifyWrites); // no slot in use: never scanned
        Assert.False(loop.Look()); // reported once
        Assert.Single(active.Device.NotifyWrites);
        RunUntil(loop, loop.Now + Slow); // the idle window's write is found by its slow scan
        Assert.Equal([1 * SlotSize], idle.Device.NotifyWrites.ToArray());

        // The windows go away: so does the loop's look.
        foreach (Window w in _windows) w.Poller.Dispose();
        Assert.Equal(0, loop.LookCount);
        Assert.False(loop.Look());
    }

    /// <summary>A driver that writes its slots without ringing the doorbell (a QEMU guest, or vism's
    /// frontend with the doorbell off) while the loop busy-polls: its writes are found by the looks,
    /// before the fast timer. That is activity too, so the window stays hot for as long as writes
    /// keep coming, not only for its hold time after the last kick.</summary>
    [Fact]
    public void Scanner_WritesFoundByLooksKeepTheWindowHot()
    {
        var loop = new ManualLoop();
        var scanner = new NotifyScanner(loop, () => loop.Now);
        TimeSpan hold = TimeSpan.FromMilliseconds(1);
        Window window = Add(loop, scanner, slotsInUse: 2, hold: hold);
        window.Poller.Activity(); // the device started: one kick, then only slot writes
        for (int i = 0; i < 60; i++) // a write between each two fast scans: three hold times of them
        {
            window.Write(i % 2);
            Assert.True(loop.Look(), $"write {i}, {loop.Now.TotalMicroseconds} us after the kick, was not found by a look");
            loop.FireNext(); // the fast scan after it finds nothing new: the look routed the write
        }
        Assert.Equal(60, window.Device.NotifyWrites.Count);
        Assert.Equal(0, loop.WorkFound); // every write was the looks' work, none the timer's
        Assert.Equal(Fast, window.Poller.Interval);

        // The writes stop: after its hold time the window backs off, and looks leave it alone.
        RunUntil(loop, loop.Now + hold + 4 * Fast);
        Assert.NotEqual(Fast, window.Poller.Interval);
        window.Write(0);
        Assert.False(loop.Look());
    }

    /// <summary>A write that the fast timer finds (the loop was asleep, no doorbell rang) is work
    /// the loop is told of, so that a busy-polling loop looks for the next one; scans that find
    /// nothing are not.</summary>
    [Fact]
    public void Scanner_ATimerScanThatFindsAWriteTellsTheLoop()
    {
        var loop = new ManualLoop();
        var scanner = new NotifyScanner(loop, () => loop.Now);
        Window window = Add(loop, scanner, slotsInUse: 2, hold: TimeSpan.FromMilliseconds(1));
        window.Poller.Activity();
        loop.FireNext();
        Assert.Equal(0, loop.WorkFound);
        window.Write(1);
        loop.FireNext();
        Assert.Equal([1 * SlotSize], window.Device.NotifyWrites.ToArray());
        Assert.Equal(1, loop.WorkFound);
        loop.FireNext();
        Assert.Equal(1, loop.WorkFound);
    }

    [Fact]
    public void Scanner_ALookWhoseNotifyEndsADevice_GoesOnWithTheOthers()
    {
        var loop = new ManualLoop();
        var scanner = new NotifyScanner(loop, () => loop.Now);
        Window first = Add(loop, scanner, slotsInUse: 2, hold: TimeSpan.FromMilliseconds(1));
        Window second = Add(loop, scanner, slotsInUse: 2, hold: TimeSpan.FromMilliseconds(1));
        Window third = Add(loop, scanner, slotsInUse: 2, hold: TimeSpan.FromMilliseconds(1));
        foreach (Window w in _windows) w.Poller.Activity();
        // Routing the first window's notify ends that device and the next one (their windows go).
        first.Device.OnNotifyWrite = _ => { first.Poller.Dispose(); second.Poller.Dispose(); };
        first.Write(0);
        second.Write(1);
        third.Write(1);
        Assert.True(loop.Look()); // no "collection was modified": the look goes on
        Assert.Single(first.Device.NotifyWrites);
        Assert.Empty(second.Device.NotifyWrites); // gone before its turn
        Assert.Equal([1 * SlotSize], third.Device.NotifyWrites.ToArray());
        Assert.Equal(1, loop.LookCount);
    }

    [Fact]
    public void Scanner_ManyIdleDevices_ShareOneWakeUpPerSlowInterval()
    {
        var loop = new ManualLoop();
        var scanner = new NotifyScanner(loop, () => loop.Now);
        for (int i = 0; i < 200; i++)
        {
            Add(loop, scanner, slotsInUse: 2).Poller.Activity();
            loop.Advance(TimeSpan.FromMicroseconds(13));
        }
        RunUntil(loop, loop.Now + 20 * Slow);
        long scans0 = _windows.Sum(w => w.Poller.Scans);
        int fired = RunUntil(loop, loop.Now + 100 * Slow);
        Assert.InRange(fired, 99, 101); // one wake-up per slow interval for all 200 idle devices
        Assert.InRange(_windows.Sum(w => w.Poller.Scans) - scans0, 200 * 99, 200 * 101); // each still scanned once per interval
    }

    [Fact]
    public void Scanner_ActiveDevicesAtTheFastInterval_ShareTheirWakeUps()
    {
        var loop = new ManualLoop();
        var scanner = new NotifyScanner(loop, () => loop.Now);
        for (int i = 0; i < 10; i++) Add(loop, scanner, slotsInUse: 1, hold: TimeSpan.FromMilliseconds(1)); // the default hold
        TimeSpan start = loop.Now;
        for (int ms = 0; ms < 20; ms++) // each of the ten written once per millisecond, at different moments
        {
            for (int i = 0; i < 10; i++)
            {
                _windows[i].Write(0);
                _windows[i].Poller.Activity(); // what a kick does: it would be scanned anyway
                RunUntil(loop, loop.Now + TimeSpan.FromMicroseconds(100));
            }
        }
        long wakeUps = loop.Scheduled;
        // Ten pollers held at 50 us by a write every ms would be 10 x 400 = 4,000 timers in 20 ms
        // with a timer each; one scanner is at most one per fast interval: 20 ms / 50 us = 400
        // (an activity only re-arms when it brings the next scan closer, which it does not here).
        Assert.True(wakeUps <= 400 + 10, $"{wakeUps} timers scheduled in 20 ms for 10 active devices");
        Assert.All(_windows, w => Assert.Equal(20, w.Device.NotifyWrites.Count));
        Assert.All(_windows, w => Assert.Equal(Fast, w.Poller.Interval));
    }

    [Fact]
    public void Scanner_NoSlotInUseOnAnyDevice_StopsTheTimerUntilActivity()
    {
        var loop = new ManualLoop();
        var scanner = new NotifyScanner(loop, () => loop.Now);
        for (int i = 0; i < 16; i++) Add(loop, scanner, slotsInUse: 1).Poller.Activity();
        RunUntil(loop, loop.Now + Slow);
        foreach (Window w in _windows) w.Device.SlotsInUse = 0;
        RunUntil(loop, loop.Now + 2 * Slow);
        Assert.Equal(0, loop.LiveTimers);
        Assert.Equal(0, scanner.Queued);
        Assert.All(_windows, w => Assert.False(w.Poller.Armed));

        _windows[3].Device.SlotsInUse = 1;
        _windows[3].Write(0);
        _windows[3].Poller.Activity(); // a kick or a mapping
        RunUntil(loop, loop.Now + Fast);
        Assert.Equal([0UL], _windows[3].Device.NotifyWrites.ToArray());
        Assert.Equal(1, scanner.Queued); // only the device with a slot in use is polled
    }

    [Fact]
    public async Task Scanner_OnARealLoop_FindsWritesOfManyDevicesWithOneTimer()
    {
        using var loop = new EventLoop("scanner-test");
        NotifyScanner scanner = await loop.InvokeAsync(() => NotifyScanner.For(loop));
        Assert.Same(scanner, await loop.InvokeAsync(() => NotifyScanner.For(loop)));
        await loop.InvokeAsync(() =>
        {
            for (int i = 0; i < 200; i++) Add(loop, scanner, slotsInUse: 4).Poller.Activity();
        });
        await Task.Delay(20 * Slow); // backed off to the slow interval
        long timers0 = await loop.InvokeAsync(() => scanner.TimersScheduled);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var rng = new Random(4);
        for (int round = 0; round < 10; round++)
        {
            Window target = _windows[rng.Next(_windows.Count)];
            int slot = rng.Next(4);
            target.Write(slot); // from this thread, as a driver's store
            SpinWait.SpinUntil(() => !target.Device.NotifyWrites.IsEmpty, TimeSpan.FromSeconds(10));
            await Task.Delay(2 * Slow);
            Assert.Equal([(ulong)slot * SlotSize], target.Device.NotifyWrites.ToArray());
            target.Device.NotifyWrites.Clear();
        }
        long timers = await loop.InvokeAsync(() => scanner.TimersScheduled) - timers0;
        double intervals = clock.Elapsed / Slow;
        // 200 per-device timers would have fired ~200 times per slow interval; the one scanner fires
        // once per slow interval, plus ~8 grid steps back up to it after each of the 10 writes (the
        // margin is for a loaded machine, where a late wake-up may fall on another grid point).
        Assert.True(timers <= 2 * intervals + 10 * 10, $"{timers} wake-ups in {intervals:F0} slow intervals for 200 devices");
        Assert.All(_windows, w => Assert.Empty(w.Device.NotifyWrites));
        await loop.InvokeAsync(() => { foreach (Window w in _windows) w.Poller.Dispose(); });
    }
}
