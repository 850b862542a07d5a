using Vism.Abstractions;

[assembly: VismPlugin(VismContract.Version)]

namespace Vism.Transport.Mmio;

/// <summary>Registers the <c>mmio</c> transport.</summary>
public sealed class MmioPlugin : IVismPlugin
{
    /// <summary>The <c>kind</c> value of this transport.</summary>
    public const string Kind = "mmio";

    /// <inheritdoc />
    public void Register(IVismPluginBuilder builder) =>
        builder.AddTransport<MmioTransport, MmioOptions>(Kind, "virtio-mmio v2 register window served to a VMM over a Unix socket");
}
