using Vism.Abstractions;

namespace Vism.Events.Shared;

/// <summary>Validation shared by the event plugins' options.</summary>
internal static class OptionRules
{
    /// <summary>The longest batch delay accepted.</summary>
    public static readonly TimeSpan MaxBatchDelay = TimeSpan.FromSeconds(1);

    /// <summary>Checks <c>batch-delay</c>: 0 (at once, in the routing loop turn) up to one second. The device
    /// loop's timers have sub-microsecond resolution, so any delay in that range means what it says.</summary>
    /// <param name="context">Where errors go.</param>
    /// <param name="delay">The configured delay.</param>
    public static void BatchDelay(OptionsValidationContext context, TimeSpan delay)
    {
        if (delay < TimeSpan.Zero || delay > MaxBatchDelay)
            context.Error("batch-delay", $"{delay.TotalMilliseconds} ms is outside 0..{MaxBatchDelay.TotalMilliseconds} ms (\"0s\" delivers at once)");
    }
}
