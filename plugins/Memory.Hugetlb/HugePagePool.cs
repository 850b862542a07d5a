using System.Globalization;
using Vism.Memory.Shared;

namespace Vism.Memory.Hugetlb;

/// <summary>The kernel's pool of huge pages of one size, from <c>/sys/kernel/mm/hugepages</c>.</summary>
/// <param name="PageSize">The page size in bytes.</param>
/// <param name="Supported">Whether this kernel has pages of that size at all.</param>
/// <param name="Total">nr_hugepages: the pool, pages set aside for hugetlb.</param>
/// <param name="Free">free_hugepages: pages of the pool no file holds (some of them may be promised
/// to a file by a reservation).</param>
/// <param name="Reserved">resv_hugepages: free pages promised to files by reservations
/// (HugePages_Rsvd), which only those files can fault in.</param>
/// <param name="Overcommit">nr_overcommit_hugepages: extra pages the kernel may create on demand.</param>
internal sealed record HugePagePool(ulong PageSize, bool Supported, long Total, long Free, long Reserved, long Overcommit)
{
    private const string Root = "/sys/kernel/mm/hugepages";

    /// <summary>The sysfs directory of this size.</summary>
    public string SysfsDirectory => $"{Root}/hugepages-{PageSize / 1024}kB";

    /// <summary>Whether any page of this size can be had (from the pool or by overcommit).</summary>
    public bool HasPages => Total > 0 || Overcommit > 0;

    /// <summary>Free pages nobody has reserved: what a new region can still claim (beyond overcommit).</summary>
    public long Available => Math.Max(0, Free - Reserved);

    /// <summary>Reads the pool of <paramref name="pageSize"/>.</summary>
    /// <param name="pageSize">Huge page size in bytes.</param>
    /// <returns>The pool as it is now.</returns>
    public static HugePagePool Read(ulong pageSize)
    {
        string dir = $"{Root}/hugepages-{pageSize / 1024}kB";
        if (pageSize < 1024 || !Directory.Exists(dir))
            return new HugePagePool(pageSize, false, 0, 0, 0, 0);
        return new HugePagePool(pageSize, true,
            ReadLong(Path.Combine(dir, "nr_hugepages")),
            ReadLong(Path.Combine(dir, "free_hugepages")),
            ReadLong(Path.Combine(dir, "resv_hugepages")),
            ReadLong(Path.Combine(dir, "nr_overcommit_hugepages")));
    }

    /// <summary>Huge page sizes this kernel offers, smallest first.</summary>
    public static IReadOnlyList<ulong> SupportedSizes()
    {
        if (!Directory.Exists(Root)) return [];
        var sizes = new List<ulong>();
        foreach (string dir in Directory.EnumerateDirectories(Root, "hugepages-*kB"))
        {
            string name = Path.GetFileName(dir);
            if (ulong.TryParse(name.AsSpan("hugepages-".Length, name.Length - "hugepages-".Length - "kB".Length),
                               NumberStyles.None, CultureInfo.InvariantCulture, out ulong kb))
                sizes.Add(kb * 1024);
        }
        sizes.Sort();
        return sizes;
    }

    /// <summary>The kernel's default huge page size (the one /proc/sys/vm/nr_hugepages reserves), or 0.</summary>
    public static ulong DefaultPageSize()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("Hugepagesize:", StringComparison.Ordinal)
                    && ulong.TryParse(line.AsSpan("Hugepagesize:".Length).Trim().TrimEnd("kB").Trim(),
                                      NumberStyles.None, CultureInfo.InvariantCulture, out ulong kb))
                    return kb * 1024;
        }
        catch (IOException)
        {
        }
        return 0;
    }

    /// <summary>How to make <paramref name="pages"/> more pages available: the command that grows the
    /// pool, to run as root.</summary>
    /// <param name="pages">Pages that should become available.</param>
    /// <returns>A sentence naming the sysfs (and, for the default size, the /proc) knob.</returns>
    public string HowToGrowPool(long pages)
    {
        long target = Total + Math.Max(1, pages);
        string alternative = DefaultPageSize() == PageSize ? $" (or: echo {target} > /proc/sys/vm/nr_hugepages)" : "";
        return $"add them to the pool as root: echo {target} > {SysfsDirectory}/nr_hugepages{alternative}";
    }

    /// <summary>One line for logs and errors.</summary>
    /// <returns>The description.</returns>
    public override string ToString() =>
        $"{Available} available of {Total} {Sizes.Prose(PageSize)} huge pages in the pool ({Free} free, {Reserved} of them reserved)"
        + (Overcommit > 0 ? $", {Overcommit} more by overcommit" : "");

    private static long ReadLong(string path) =>
        long.TryParse(File.ReadAllText(path).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long v) ? v : 0;
}
