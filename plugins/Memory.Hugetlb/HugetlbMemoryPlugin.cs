using Vism.Abstractions;

[assembly: VismPlugin(VismContract.Version)]

namespace Vism.Memory.Hugetlb;

/// <summary>Entry point of the <c>hugetlb</c> memory plugin.</summary>
public sealed class HugetlbMemoryPlugin : IVismPlugin
{
    /// <summary>The <c>kind</c> value that selects this backend.</summary>
    public const string Kind = "hugetlb";

    /// <inheritdoc />
    public void Register(IVismPluginBuilder builder) =>
        builder.AddMemory<HugetlbMemoryBackend, HugetlbMemoryOptions>(Kind,
            "regions in huge pages (memfd MFD_HUGETLB or a hugetlbfs mount), 2 MiB or 1 GiB, reserved (or allocated with fallocate) at ALLOC");
}
