using Vism.Native;
using Xunit;

namespace Vism.Testing;

/// <summary>
/// Leak checks on the process's open descriptors. The runtime itself opens descriptors for a
/// moment now and then (reading /proc and cgroup files), so a count taken at one instant can be one
/// or two too high; a leaked descriptor stays. The check therefore waits (up to 5 s) for the count
/// to come back instead of comparing once. It never collects garbage in between, so a descriptor
/// leaked into an unreachable handle still counts.
/// </summary>
public static class Descriptors
{
    /// <summary>Open descriptors now, after earlier tests' finalizers ran (so none closes in the middle of a measurement).</summary>
    public static int Baseline()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        return Fd.CountOpen();
    }

    /// <summary>Asserts that the process is back to at most <paramref name="before"/> open descriptors.</summary>
    /// <param name="before">A count from <see cref="Baseline"/> (or <see cref="Fd.CountOpen"/>).</param>
    /// <param name="what">What should have closed them, for the message.</param>
    public static void AssertBackTo(int before, string what = "")
    {
        long deadline = Environment.TickCount64 + 5_000;
        int now;
        while ((now = Fd.CountOpen()) > before && Environment.TickCount64 < deadline)
            Thread.Sleep(20);
        Assert.True(now <= before, $"{now - before} descriptor(s) leaked{(what.Length > 0 ? " " + what : "")} ({before} before, {now} after)");
    }
}
