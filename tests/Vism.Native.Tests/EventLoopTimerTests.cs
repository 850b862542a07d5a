using System.Diagnostics;
using System.Runtime.InteropServices;
using Vism.Abstractions;
using Xunit.Abstractions;

namespace Vism.Native.Tests;

/// <summary>
/// The loop's timers: sub-millisecond delays mean what they say (never early, in due order), on both
/// ways of waiting (epoll_pwait2 and the timerfd fallback). Only ordering and "not earlier than" are
/// asserted; how late timers fire on this machine is written to the test output.
/// </summary>
public sealed partial class EventLoopTimerTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    public static TheoryData<LoopTimerMode> Modes => [LoopTimerMode.EpollPwait2, LoopTimerMode.TimerFd];

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task SubMillisecondTimersFireInDueOrderWhateverOrderTheyWereScheduledIn(LoopTimerMode mode)
    {
        using var loop = new EventLoop("timer-test", timers: mode);
        int[] micros = [900, 100, 700, 300, 500, 200, 800, 400, 600];
        // Each timer is due at its delay after some instant within its Schedule call: [Lo, Hi].
        var due = new Dictionary<int, (long Lo, long Hi)>();
        var fired = new List<int>();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await loop.InvokeAsync(() =>
        {
            foreach (int us in micros)
            {
                long delay = us * Stopwatch.Frequency / 1_000_000;
                long before = Stopwatch.GetTimestamp();
                loop.Schedule(TimeSpan.FromMicroseconds(us), () =>
                {
                    fired.Add(us);
                    if (fired.Count == micros.Length) done.SetResult();
                });
                due[us] = (before + delay, Stopwatch.GetTimestamp() + delay);
            }
        });
        await done.Task.WaitAsync(Wait);
        Assert.Equal(micros.Length, fired.Count);
        // A timer that fired later than another must not have been due certainly earlier. (Unless the
        // test thread was preempted between two Schedule calls, this is exactly ascending order.)
        for (int i = 0; i < fired.Count; i++)
            for (int j = i + 1; j < fired.Count; j++)
                Assert.False(due[fired[j]].Hi < due[fired[i]].Lo, $"{fired[j]} µs fired after {fired[i]} µs: {string.Join(", ", fired)}");
        output.WriteLine($"{mode}: fired {string.Join(", ", fired)}");
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task ATimerNeverFiresBeforeItsDelayEvenBelowAMillisecond(LoopTimerMode mode)
    {
        using var loop = new EventLoop("timer-test", timers: mode);
        var lateness = new List<double>();
        foreach (int us in (int[])[50, 100, 250, 400, 750, 1500])
        {
            for (int round = 0; round < 20; round++)
            {
                var fired = new TaskCompletionSource<TimeSpan>(TaskCreationOptions.RunContinuationsAsynchronously);
                TimeSpan delay = TimeSpan.FromMicroseconds(us);
                await loop.InvokeAsync(() =>
                {
                    long start = Stopwatch.GetTimestamp();
                    loop.Schedule(delay, () => fired.SetResult(Stopwatch.GetElapsedTime(start)));
                });
                TimeSpan elapsed = await fired.Task.WaitAsync(Wait);
                Assert.True(elapsed >= delay, $"a {us} µs timer fired after {elapsed.TotalMicroseconds:F1} µs");
                lateness.Add((elapsed - delay).TotalMicroseconds);
            }
        }
        lateness.Sort();
        output.WriteLine($"{mode}: lateness median {lateness[lateness.Count / 2]:F1} µs, p90 {lateness[lateness.Count * 9 / 10]:F1} µs, max {lateness[^1]:F1} µs");
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task ATimerScheduledFromAnotherThreadCountsItsDelayFromTheCall(LoopTimerMode mode)
    {
        using var loop = new EventLoop("timer-test", timers: mode);
        var fired = new TaskCompletionSource<(TimeSpan Elapsed, bool OnLoop)>(TaskCreationOptions.RunContinuationsAsynchronously);
        long start = Stopwatch.GetTimestamp();
        loop.Schedule(TimeSpan.FromMicroseconds(300), () => fired.SetResult((Stopwatch.GetElapsedTime(start), loop.IsOnLoop)));
        (TimeSpan elapsed, bool onLoop) = await fired.Task.WaitAsync(Wait);
        Assert.True(onLoop);
        Assert.True(elapsed >= TimeSpan.FromMicroseconds(300), $"fired after {elapsed.TotalMicroseconds:F1} µs");
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task TimersWithTheSameDelayFireInTheOrderTheyWereScheduled(LoopTimerMode mode)
    {
        using var loop = new EventLoop("timer-test", timers: mode);
        var fired = new List<int>();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await loop.InvokeAsync(() =>
        {
            for (int i = 0; i < 50; i++)
            {
                int n = i;
                loop.Schedule(TimeSpan.FromMicroseconds(200), () =>
                {
                    fired.Add(n);
                    if (fired.Count == 50) done.SetResult();
                });
            }
        });
        await done.Task.WaitAsync(Wait);
        Assert.Equal(Enumerable.Range(0, 50), fired);
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task ACancelledTimerNeverFiresEvenWhenAnEarlierTimerOfTheSameTurnCancelsIt(LoopTimerMode mode)
    {
        using var loop = new EventLoop("timer-test", timers: mode);
        var fired = new List<string>();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await loop.InvokeAsync(() =>
        {
            loop.Schedule(TimeSpan.FromMicroseconds(100), () => fired.Add("cancelled before it was due")).Dispose();
            IDisposable? victim = null;
            // Both are due long before the loop looks again (it is busy here for 5 ms), so they run
            // in one turn; the first cancels the second.
            loop.Schedule(TimeSpan.FromMicroseconds(200), () => { fired.Add("first"); victim!.Dispose(); });
            victim = loop.Schedule(TimeSpan.FromMicroseconds(300), () => fired.Add("victim"));
            loop.Schedule(TimeSpan.FromMilliseconds(2), () => { fired.Add("last"); done.SetResult(); });
            Thread.Sleep(5);
        });
        await done.Task.WaitAsync(Wait);
        Assert.Equal(["first", "last"], fired);
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task ATimerThatSchedulesAZeroDelayTimerLetsFdEventsRunInBetween(LoopTimerMode mode)
    {
        using var loop = new EventLoop("timer-test", timers: mode);
        using EventFd fd = EventFd.Create();
        var order = new List<string>();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        IDisposable watch = await loop.InvokeAsync(() => loop.WatchReadable(fd.Handle, () =>
        {
            fd.Drain();
            order.Add("fd");
        }));
        int ticks = 0;
        void Tick()
        {
            order.Add("timer");
            if (++ticks == 1) fd.Signal();
            if (ticks < 3) loop.Schedule(TimeSpan.Zero, Tick);
            else done.SetResult();
        }
        loop.Schedule(TimeSpan.FromMicroseconds(100), Tick);
        await done.Task.WaitAsync(Wait);
        await loop.InvokeAsync(watch.Dispose);
        Assert.Equal(["timer", "fd", "timer", "timer"], order);
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task AnIdleLoopWithAFarTimerSleepsInsteadOfSpinning(LoopTimerMode mode)
    {
        using var loop = new EventLoop("timer-test", timers: mode);
        int tid = await loop.InvokeAsync(() => gettid());
        using IDisposable far = loop.Schedule(TimeSpan.FromSeconds(60), () => { });
        // A near timer that is cancelled leaves the loop nothing to wake up for but the far one.
        loop.Schedule(TimeSpan.FromMicroseconds(50), () => { }).Dispose();
        await loop.InvokeAsync(() => { });
        long before = ThreadCpuTicks(tid);
        await Task.Delay(TimeSpan.FromSeconds(1));
        long used = ThreadCpuTicks(tid) - before;
        // A spinning thread would use ~100 ticks (10 ms each) in that second; a sleeping one none.
        Assert.True(used < 20, $"the idle loop thread used {used} clock ticks of CPU in one second");
    }

    [Fact]
    public async Task TheLoopThreadRunsWithAOneMicrosecondTimerSlack()
    {
        using var loop = new EventLoop("timer-test");
        Assert.NotEqual(LoopTimerMode.Auto, loop.TimerMode);
        long slack = await loop.InvokeAsync(() => (long)prctl(PrGetTimerSlack, 0, 0, 0, 0));
        Assert.Equal(EventLoop.TimerSlackNs, slack);
    }

    private const int PrGetTimerSlack = 30;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int prctl(int option, ulong arg2, ulong arg3, ulong arg4, ulong arg5);

    [LibraryImport("libc")]
    private static partial int gettid();

    /// <summary>utime + stime of one thread of this process, in clock ticks.</summary>
    private static long ThreadCpuTicks(int tid)
    {
        string stat = File.ReadAllText($"/proc/self/task/{tid}/stat");
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return long.Parse(fields[11]) + long.Parse(fields[12]); // fields 14 and 15 of stat(5)
    }
}
