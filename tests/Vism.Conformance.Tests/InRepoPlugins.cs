using Vism.Events.Irq;
using Vism.Events.Vq;
using Vism.Memory.File;
using Vism.Memory.Hugetlb;
using Vism.Transport.Mmio;
using Vism.Transport.VhostUser;

namespace Vism.Conformance.Tests;

/// <summary>A composer over the in-repo plugins, configured as <c>vism matrix</c> configures them.</summary>
internal static class InRepoPlugins
{
    /// <summary>Huge pages the suite needs at most at once (two devices with every 2 MiB slot filled).</summary>
    public const int HugePages = 16;

    public static IVismPlugin[] All => [new VhostUserPlugin(), new MmioPlugin(), new FileMemoryPlugin(), new HugetlbMemoryPlugin(), new VqEventsPlugin(), new IrqEventsPlugin()];

    public static DirectComposer Composer(ILoggerFactory? logs = null, params IVismPlugin[] extra) =>
        new DirectComposer(logs ?? NullLoggerFactory.Instance, [.. All, .. extra]); // plugin defaults: nothing forced
}
