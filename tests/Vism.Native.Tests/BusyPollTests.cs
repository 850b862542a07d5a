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
