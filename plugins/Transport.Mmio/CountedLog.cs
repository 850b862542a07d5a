using Microsoft.Extensions.Logging;
using Vism.Abstractions;

namespace Vism.Transport.Mmio;

/// <summary>Counts a refusal and logs its reason: as a warning for the first
/// <see cref="LoudLimit"/> of its counter, then at debug level, so a guest that repeats a bad
/// access millions of times cannot flood the host's log. The counter always stays exact.</summary>
internal static class CountedLog
{
    /// <summary>Refusals of one counter logged as warnings before the rest go to debug.</summary>
    public const int LoudLimit = 64;

    public static void Refusal(IDeviceCounters counters, ILogger log, string counter, string template, params object?[] args)
    {
        counters.Increment(counter);
        LogLevel level = counters.Get(counter) <= LoudLimit ? LogLevel.Warning : LogLevel.Debug;
        log.Log(level, template, args);
    }
}
