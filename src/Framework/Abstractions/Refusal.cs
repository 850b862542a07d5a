using Microsoft.Extensions.Logging;

namespace Vism.Abstractions;

/// <summary>
/// Why vism refused something a driver, VMM or peer asked for: the counter it is counted under
/// (for example <c>alloc.no-slot</c>) and a sentence for the log. The one way a refusal travels
/// from where it is found to where it is answered, counted and logged.
/// </summary>
/// <param name="Counter">Counter name (a device counter, without any <c>err.</c> prefix the
/// reporter adds).</param>
/// <param name="Detail">What happened, for the log.</param>
public readonly record struct Refusal(string Counter, string Detail)
{
    /// <inheritdoc />
    public override string ToString() => $"{Counter}: {Detail}";
}

/// <summary>
/// The one rate limit on logging refusals: each counter's first <see cref="LoudFirst"/> refusals,
/// and then every one whose count is a power of two, are logged; the rest are only counted. A
/// driver repeating a bad request millions of times cannot flood the log, every reason still shows
/// up in it (with its count), and the counter itself stays exact.
/// </summary>
public static class RateLimitedLog
{
    /// <summary>Refusals of one counter always logged before the power-of-two thinning starts.</summary>
    public const int LoudFirst = 10;

    /// <summary>Whether the <paramref name="times"/>-th occurrence of one counter is logged.</summary>
    /// <param name="times">How many times the counter has been counted, this one included.</param>
    /// <returns>True for the first <see cref="LoudFirst"/> and then for powers of two.</returns>
    public static bool ShouldLog(long times) => times <= LoudFirst || long.IsPow2(times);

    /// <summary>Counts <paramref name="counter"/> and, when <see cref="ShouldLog"/> says so, logs the
    /// message at <paramref name="level"/>.</summary>
    /// <param name="counters">The device's counters.</param>
    /// <param name="log">The logger.</param>
    /// <param name="level">The level of the lines that are logged.</param>
    /// <param name="counter">The full counter name.</param>
    /// <param name="template">Message template.</param>
    /// <param name="args">Its arguments.</param>
    /// <returns>How many times the counter has been counted now.</returns>
    public static long Count(IDeviceCounters counters, ILogger log, LogLevel level, string counter, string template, params object?[] args)
    {
        ArgumentNullException.ThrowIfNull(counters);
        ArgumentNullException.ThrowIfNull(log);
        counters.Increment(counter);
        long times = counters.Get(counter);
        if (ShouldLog(times))
            log.Log(level, template, args);
        return times;
    }
}
