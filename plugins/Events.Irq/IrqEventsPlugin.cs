using Vism.Abstractions;

[assembly: VismPlugin(VismContract.Version)]

namespace Vism.Events.Irq;

/// <summary>Entry point of the <c>irq</c> event plugin.</summary>
public sealed class IrqEventsPlugin : IVismPlugin
{
    /// <summary>The <c>kind</c> value that selects this event channel.</summary>
    public const string Kind = "irq";

    /// <inheritdoc />
    public void Register(IVismPluginBuilder builder) =>
        builder.AddEvents<IrqEventChannel, IrqEventOptions>(Kind,
            "update events as the interrupt vector each region is bound to with EVENT_VECTOR (VIRTIO_ISM_F_EVENT_IRQ)");
}
