using Vism.Abstractions;

[assembly: VismPlugin(VismContract.Version)]

namespace Vism.Transport.VhostUser;

/// <summary>Entry point: registers the <c>vhost-user</c> transport.</summary>
public sealed class VhostUserPlugin : IVismPlugin
{
    /// <summary>The <c>kind</c> value that selects this transport.</summary>
    public const string Kind = "vhost-user";

    /// <inheritdoc />
    public void Register(IVismPluginBuilder builder) =>
        builder.AddTransport<VhostUserTransport, VhostUserOptions>(Kind,
            "vhost-user backend on a Unix socket; QEMU 11.1 shows it as PCI (vhost-user-test-device-pci)");
}
