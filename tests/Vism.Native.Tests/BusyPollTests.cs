using System.Runtime.InteropServices;
using Vism.Abstractions;

namespace Vism.Native.Tests;

/// <summary>
/// Spin-then-block waits (<see cref="EventFd.Wait(TimeSpan, TimeSpan)"/>) and a busy-polling loop
/// (<see cref="EventLoop.BusyPoll"/>) do what the blocking ones do: work, fds, timers and wake-ups
/// all arrive, whether they come while the waiter spins or after it went to sleep; and an idle
/// busy-polling loop goes to sleep.
/// </summary>
public sealed partial class BusyPollTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    [Fact]
    public void ASpinningWaitTakesASignalThatComesWhileItSpinsOrAfterItSleeps()
    {
        using EventFd fd = EventFd.Create();
        fd.Signal(3);
        Assert.Equal(3UL, fd.Wait(Wait, TimeSpan.FromMilliseconds(10))); // already there: taken while spinning
        var late = new Thread(() => { Thread.Sleep(100); fd.Signal(); });
        late.Start();
        Assert.Equal(1UL, fd.Wait(Wait, TimeSpan.FromMicroseconds(50))); // comes after the spin: poll(2) wakes
        late.Join();
        Assert.Equal(0UL, fd.Wait(TimeSpan.FromMilliseconds(20), TimeSpan.FromMilliseconds(5))); // nothing: times out
    }

    [Fact]
    public void ABlockingWaitAllocatesNothing()
    {
        using EventFd fd = EventFd.Create();
        fd.Signal();
        fd.Wait(Wait); // compiled
        fd.Signal();
        long before = GC.GetAllocatedBytesForCurrentThread();
        ulong v = fd.Wait(Wait);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.Equal(1UL, v);
    }

    [Fact]
    public async Task ABusyPollingLoopRunsPostedWorkFdCallbacksAndTimersAndSleepsWhenIdle()
    {
        using var loop = new EventLoop("busy-poll-test") { BusyPoll = TimeSpan.FromMilliseconds(2) };
        Assert.Equal(TimeSpan.FromMilliseconds(2), loop.BusyPoll);
        Assert.Throws<ArgumentOutOfRangeException>(() => loop.BusyPoll = TimeSpan.FromTicks(-1));
        Assert.True(await loop.InvokeAsync(() => loop.IsOnLoop).WaitAsync(Wait));

        using EventFd fd = EventFd.Create();
        var readable = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using IDisposable watch = loop.WatchReadable(fd.Handle, () => { fd.Drain(); readable.TrySetResult(); });
        fd.Signal();
        await readable.Task.WaitAsync(Wait);

        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        loop.Schedule(TimeSpan.FromMilliseconds(20), () => fired.TrySetResult()); // due after the busy-poll window
        await fired.Task.WaitAsync(Wait);

        // Idle for a while: the loop thread must have gone to sleep, using far less than the time.
        long cpu0 = await loop.InvokeAsync(ThreadCpuMicroseconds).WaitAsync(Wait);
        await Task.Delay(300);
        long cpu1 = await loop.InvokeAsync(ThreadCpuMicroseconds).WaitAsync(Wait);
        Assert.True(cpu1 - cpu0 < 150_000, $"an idle busy-polling loop used {cpu1 - cpu0} us of CPU in 300 ms");
    }

    [Fact]
    public async Task BusyLooksRunOnlyWhileTheLoopBusyPollsAndOneThatFindsWorkKeepsItPolling()
    {
        // A loop that does not busy-poll never looks.
        long sleeperLooks = 0;
        using (var sleeper = new EventLoop("no-busy-poll-test"))
        using (sleeper.OnBusyLook(() => { Interlocked.Increment(ref sleeperLooks); return false; }))
        {
            for (int i = 0; i < 20; i++)
                await sleeper.InvokeAsync(() => true).WaitAsync(Wait);
            await Task.Delay(20);
        }
        Assert.Equal(0, Interlocked.Read(ref sleeperLooks));

        // A busy-polling loop (50 ms window) looks after work; a look that finds work for 300 ms keeps
        // it looking all that time, and then it sleeps within the window.
        using var loop = new EventLoop("busy-look-test") { BusyPoll = TimeSpan.FromMilliseconds(50) };
        long freq = System.Diagnostics.Stopwatch.Frequency;
        long until = 0, calls = 0, firstCall = 0, lastCall = 0, offLoop = 0;
        IDisposable registration = loop.OnBusyLook(() =>
        {
            long now = System.Diagnostics.Stopwatch.GetTimestamp();
            Interlocked.Increment(ref calls);
            if (!loop.IsOnLoop) Interlocked.Increment(ref offLoop);
            if (Interlocked.Read(ref firstCall) == 0) Interlocked.Exchange(ref firstCall, now);
            Interlocked.Exchange(ref lastCall, now);
            return now < Interlocked.Read(ref until);
        });
        await loop.InvokeAsync(() => Interlocked.Exchange(ref until, System.Diagnostics.Stopwatch.GetTimestamp() + freq * 3 / 10)).WaitAsync(Wait);
        var samples = new List<long>();
        for (int i = 0; i < 60; i++)
        {
            await Task.Delay(10);
            samples.Add(Interlocked.Read(ref calls));
        }
        double spanMs = (Interlocked.Read(ref lastCall) - Interlocked.Read(ref firstCall)) * 1000.0 / freq;
        string trace = string.Join(",", samples);
        Assert.Equal(0, Interlocked.Read(ref offLoop));
        Assert.True(spanMs >= 290, $"looks that found work kept the loop polling only {spanMs:F1} ms (calls every 10 ms: {trace})");
        Assert.True(spanMs < 500, $"the loop kept looking {spanMs:F1} ms, after its looks had found nothing for 200 ms (calls: {trace})");
        Assert.Equal(samples[^1], samples[^10]); // asleep: no look in the last 90 ms

        // Disposed (twice): never called again, however much work follows.
        registration.Dispose();
        registration.Dispose();
        long atDispose = Interlocked.Read(ref calls);
        await loop.InvokeAsync(() => true).WaitAsync(Wait);
        await Task.Delay(20);
        Assert.Equal(atDispose, Interlocked.Read(ref calls));
    }

    [Fact]
    public async Task WorkLongerThanTheBusyPollWindowIsStillFollowedByPolling()
    {
        // The window starts when the work ends: a 20 ms piece of work in a loop with a 5 ms window
        // is followed by looks (before the fix the window had run out during the work, and the loop
        // slept at once).
        using var loop = new EventLoop("busy-after-slow-work-test") { BusyPoll = TimeSpan.FromMilliseconds(5) };
        long calls = 0, workEnded = 0, firstAfter = 0;
        using IDisposable registration = loop.OnBusyLook(() =>
        {
            Interlocked.Increment(ref calls);
            if (Interlocked.Read(ref workEnded) != 0 && Interlocked.Read(ref firstAfter) == 0)
                Interlocked.Exchange(ref firstAfter, System.Diagnostics.Stopwatch.GetTimestamp());
            return false;
        });
        await loop.InvokeAsync(() => true).WaitAsync(Wait); // compiled, and any first window over
        await Task.Delay(50);
        await loop.InvokeAsync(() =>
        {
            Thread.Sleep(20);
            Interlocked.Exchange(ref workEnded, System.Diagnostics.Stopwatch.GetTimestamp());
            return true;
        }).WaitAsync(Wait);
        await Task.Delay(50);
        Assert.True(Interlocked.Read(ref firstAfter) != 0, "the loop slept at once after work longer than its busy-poll window");
    }

    [Fact]
    public async Task ATimerThatFoundWorkIsFollowedByPollingOneThatFoundNothingIsNot()
    {
        // A transport's timer that scans polled memory (the NOTIFY window of a driver that rings no
        // doorbell) and finds writes is work: the loop polls after it, so the next write is found by a
        // look instead of the next timer. A periodic timer that finds nothing leaves the loop asleep.
        using var loop = new EventLoop("busy-after-timer-test") { BusyPoll = TimeSpan.FromMilliseconds(20) };
        IDeviceLoop deviceLoop = loop;
        long calls = 0;
        using IDisposable registration = loop.OnBusyLook(() => { Interlocked.Increment(ref calls); return false; });
        await loop.InvokeAsync(() => true).WaitAsync(Wait); // compiled, and its window over below
        await Task.Delay(100);

        // Scheduled from off the loop (which posts, and so polls 20 ms), due well after that.
        var idle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        loop.Schedule(TimeSpan.FromMilliseconds(80), () => idle.TrySetResult());
        await Task.Delay(50);
        long before = Interlocked.Read(ref calls);
        await idle.Task.WaitAsync(Wait);
        await Task.Delay(50);
        Assert.Equal(before, Interlocked.Read(ref calls)); // a timer that found nothing: no polling

        var found = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        loop.Schedule(TimeSpan.FromMilliseconds(80), () => { deviceLoop.FoundWork(); found.TrySetResult(); });
        await Task.Delay(50);
        before = Interlocked.Read(ref calls);
        await found.Task.WaitAsync(Wait);
        await Task.Delay(50);
        Assert.True(Interlocked.Read(ref calls) > before, "a timer that found work was not followed by busy polling");
    }

    [Fact]
    public async Task ABusyLookThatThrowsIsLoggedAndTheLoopGoesOn()
    {
        using var loop = new EventLoop("busy-look-throws-test") { BusyPoll = TimeSpan.FromMilliseconds(5) };
        long others = 0;
        using IDisposable bad = loop.OnBusyLook(() => throw new InvalidOperationException("look failed"));
        using IDisposable good = loop.OnBusyLook(() => { Interlocked.Increment(ref others); return false; });
        for (int i = 0; i < 5; i++)
            await loop.InvokeAsync(() => true).WaitAsync(Wait);
        await Task.Delay(20);
        Assert.True(Interlocked.Read(ref others) > 0, "a throwing look stopped the other looks");
        Assert.True(await loop.InvokeAsync(() => loop.IsOnLoop).WaitAsync(Wait));
    }

    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct Rusage
    {
        public long UserSeconds, UserMicroseconds, SystemSeconds, SystemMicroseconds;
        public fixed long Rest[14];
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getrusage(int who, out Rusage usage);

    private static long ThreadCpuMicroseconds()
    {
        Assert.Equal(0, getrusage(1, out Rusage u)); // RUSAGE_THREAD
        return (u.UserSeconds + u.SystemSeconds) * 1_000_000 + u.UserMicroseconds + u.SystemMicroseconds;
    }
}
