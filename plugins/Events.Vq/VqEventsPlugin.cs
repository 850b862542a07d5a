using Vism.Abstractions;

[assembly: VismPlugin(VismContract.Version)]

namespace Vism.Events.Vq;

/// <summary>Entry point of the <c>vq</c> event plugin.</summary>
public sealed class VqEventsPlugin : IVismPlugin
{
    /// <summary>The <c>kind</c> value that selects this event channel.</summary>
    public const string Kind = "vq";

    /// <inheritdoc />
    public void Register(IVismPluginBuilder builder) =>
        builder.AddEvents<VqEventChannel, VqEventOptions>(Kind,
            "update events as {num, offset[]} records on the eventq (VIRTIO_ISM_F_EVENT_VQ)");
}
