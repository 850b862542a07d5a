using System.ComponentModel;
using Vism.Abstractions;
using Vism.Events.Shared;

namespace Vism.Events.Irq;

/// <summary>What happens to an update of a region the driver has not bound to a vector yet.</summary>
public enum UnboundUpdates
{
    /// <summary>Remember it (one flag per region) and fire the vector as soon as the driver binds the
    /// region, so an update between ATTACH and EVENT_VECTOR is not lost.</summary>
    Hold,

    /// <summary>Drop it (counted as <c>events.irq.dropped-unbound</c>).</summary>
    Drop,
}

/// <summary>Options of the <c>irq</c> event plugin, bound from <c>[device.events]</c>.</summary>
public sealed class IrqEventOptions : IValidatableOptions
{
    /// <summary>How long the first update waits for others before vectors fire; updates of regions
    /// sharing a vector within that time fire it once. Zero fires at once, in the loop turn that routed
    /// the update.</summary>
    [Description("How long the first update waits for more before vectors fire (interrupt moderation); regions sharing a vector then fire it once. 0 = at once, in the loop turn that routed the update. At most 1s; sub-millisecond delays such as \"200us\" are honoured.")]
    public TimeSpan BatchDelay { get; set; } = TimeSpan.Zero;

    /// <summary>What happens to an update of a region not yet bound with EVENT_VECTOR.</summary>
    [Description("Update of a region not yet bound with EVENT_VECTOR: \"hold\" fires its vector when the driver binds it; \"drop\" discards it (counted).")]
    public UnboundUpdates Unbound { get; set; } = UnboundUpdates.Hold;

    /// <inheritdoc />
    public void Validate(OptionsValidationContext context)
    {
        OptionRules.BatchDelay(context, BatchDelay);
        if (!Enum.IsDefined(Unbound))
            context.Error("unbound", $"{(int)Unbound} is not one of \"hold\", \"drop\"");
        if (context.TransportOptions is IVectorTransportOptions transport)
        {
            if (transport.EventVectors == 0)
                context.Error("kind", "the device would offer VIRTIO_ISM_F_EVENT_IRQ, but its transport offers no per-region vector to deliver it " +
                    "(the transport's vectors is 0): give the transport vectors, or use events kind \"vq\"");
            else if (transport.GuestVectorLimitation is string limitation)
                context.Warning("kind", $"EVENT_IRQ cannot deliver per-region interrupts to a guest here: {limitation}");
        }
    }
}
