using System.ComponentModel;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Memory.Shared;

namespace Vism.Memory.Hugetlb;

/// <summary>Options of the <c>hugetlb</c> memory plugin, bound from <c>[device.memory]</c>.</summary>
public sealed class HugetlbMemoryOptions : IValidatableOptions
{
    /// <summary>The huge page size: 2 MiB (default) or 1 GiB, or any size the kernel offers.</summary>
    [Description("Huge page size: \"2MiB\" (default) or \"1GiB\" (any size listed in /sys/kernel/mm/hugepages). region-size must be a multiple of it. With mount, it must equal the mount's pagesize.")]
    public ulong PageSize { get; set; } = 2UL << 20;

    /// <summary>A hugetlbfs mount to create region files in; empty uses memfd_create(MFD_HUGETLB).</summary>
    [Description("A hugetlbfs mount point to create region files in (e.g. /dev/hugepages); empty = memfd_create(MFD_HUGETLB), which needs no mount.")]
    public string Mount { get; set; } = "";

    /// <summary>Start of every memfd's or file's name; the device name and the token follow.</summary>
    [Description("Start of every memfd's or file's name; the device name and the token follow.")]
    public string Prefix { get; set; } = "vism-";

    /// <summary>How a region's pages are claimed at ALLOC: reserved (default) or allocated with fallocate.</summary>
    [Description("How a region's huge pages are claimed at ALLOC: \"reserve\" (default: the kernel reserves them for the region without allocating or zeroing them, so an ALLOC costs the same for any size; they are zeroed when first touched) or \"fallocate\" (allocated and zeroed at ALLOC, linear in the region's size; no page fault later). Either way, running out of huge pages is an ERR ack for the ALLOC, never a SIGBUS later.")]
    public HugePageClaim Claim { get; set; } = HugePageClaim.Reserve;

    /// <summary>Most bytes this device's regions may hold at once; 0 means the REGIONS window size.</summary>
    [Description("Most bytes this device's regions may hold at once (a multiple of page-size); 0 = the size of the REGIONS window.")]
    public ulong Capacity { get; set; }

    /// <inheritdoc />
    public void Validate(OptionsValidationContext context)
    {
        OptionRules.Prefix(context, Prefix);
        if (!Enum.IsDefined(Claim))
            context.Error("claim", $"{(int)Claim} is not a claim; use \"reserve\" or \"fallocate\"");
        IReadOnlyList<ulong> sizes = HugePagePool.SupportedSizes();
        if (!sizes.Contains(PageSize))
        {
            context.Error("page-size", sizes.Count == 0
                ? "this kernel offers no huge pages (/sys/kernel/mm/hugepages is missing); use the file memory plugin"
                : $"{Sizes.Prose(PageSize)} is not a huge page size of this kernel; it offers {string.Join(", ", sizes.Select(Sizes.Prose))}");
            return;
        }
        OptionRules.RegionSize(context, PageSize, "huge");
        OptionRules.Capacity(context, Capacity, PageSize);

        HugePagePool pool = HugePagePool.Read(PageSize);
        if (!pool.HasPages)
        {
            ulong capacity = OptionRules.EffectiveCapacity(Capacity, context.Device);
            long want = (long)Math.Max(1, Math.Min(capacity, context.Device.RegionSize * 16) / PageSize);
            context.Error("page-size", $"the pool of {Sizes.Prose(PageSize)} huge pages is empty on this machine (nr_hugepages and nr_overcommit_hugepages are 0); {pool.HowToGrowPool(want)}");
        }
        if (!string.IsNullOrEmpty(Mount))
        {
            string? problem = CheckMount(context.Host.State(Mount));
            if (problem is not null) context.Error("mount", problem);
        }
    }

    private string? CheckMount(string mount)
    {
        if (!Posix.TryStatFs(mount, out Posix.StatFs fs))
            return $"{mount}: {Posix.Describe(Posix.LastError)}; create a mount with: mount -t hugetlbfs -o pagesize={PageSize >> 20}M none {mount}";
        if (fs.Type != Posix.HugetlbfsMagic || !Directory.Exists(mount))
            return $"{mount} is not a hugetlbfs mount; create one with: mount -t hugetlbfs -o pagesize={PageSize >> 20}M none {mount}";
        if ((ulong)fs.BlockSize != PageSize)
            return $"{mount} has {Sizes.Prose((ulong)fs.BlockSize)} pages but page-size is {Sizes.Prose(PageSize)}; set page-size = \"{Sizes.Prose((ulong)fs.BlockSize).Replace(" ", "")}\" or use a mount with pagesize={PageSize >> 20}M";
        if (Syscall.access(mount, AccessModes.W_OK | AccessModes.X_OK) != 0)
            return $"{mount} is not writable: {Posix.Describe(Stdlib.GetLastError())}";
        return null;
    }
}
