using System.ComponentModel;
using Vism.Abstractions;
using Vism.Events.Shared;

namespace Vism.Events.Vq;

/// <summary>Options of the <c>vq</c> event plugin, bound from <c>[device.events]</c>.</summary>
public sealed class VqEventOptions : IValidatableOptions
{
    /// <summary>How long the first pending update waits for others to share its eventq buffer.
    /// Zero fills a buffer at once, in the loop turn that routed the update.</summary>
    [Description("How long the first pending update waits for more to share one eventq buffer (interrupt moderation); 0 = at once, in the loop turn that routed the update. At most 1s; sub-millisecond delays such as \"200us\" are honoured.")]
    public TimeSpan BatchDelay { get; set; } = TimeSpan.Zero;

    /// <inheritdoc />
    public void Validate(OptionsValidationContext context) => OptionRules.BatchDelay(context, BatchDelay);
}
