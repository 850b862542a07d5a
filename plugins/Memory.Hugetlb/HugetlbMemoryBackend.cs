using Microsoft.Extensions.Logging;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Memory.Shared;
using Vism.Native;

namespace Vism.Memory.Hugetlb;

/// <summary>
/// Memory plugin <c>hugetlb</c>: every region is a memfd of its own created with MFD_HUGETLB (or an
/// unnamed file on a hugetlbfs mount), its huge pages claimed when allocated (reserved for the file
/// by default, or allocated with fallocate: <see cref="HugePageClaim"/>), so running out of huge
/// pages is a refused allocation, never a SIGBUS later; a release truncates the file, which hands
/// the pages and the reservation back to the pool at once. Regions do not persist.
/// </summary>
public sealed class HugetlbMemoryBackend : IMemoryBackend
{
    private readonly RegionAllocator _allocator;
    private int _recovered;

    /// <summary>Creates the backend after checking that pages of the configured size exist
    /// (and, with a mount, that it is a hugetlbfs mount of that size). Throws when it cannot serve.</summary>
    /// <param name="options">Validated options.</param>
    /// <param name="device">The device this backend serves.</param>
    /// <param name="host">The host.</param>
    /// <param name="counters">The device's counters (allocation failures are counted there).</param>
    /// <param name="log">Logger.</param>
    public HugetlbMemoryBackend(HugetlbMemoryOptions options, DeviceDescription device, HostDescription host,
                                IDeviceCounters counters, ILogger<HugetlbMemoryBackend> log)
    {
        OptionRules.ThrowIfInvalid(options, "hugetlb", device, host);
        PageSize = options.PageSize;
        Claim = options.Claim;
        PageClaim pages = HugePageClaims.For(Claim);
        Mount = string.IsNullOrEmpty(options.Mount) ? null : host.State(options.Mount);
        var names = new RegionNames(options.Prefix, device.Name);
        IRegionFileSource source = Mount is null
            ? new MemfdSource(names, PageSize, pages)
            : new MountSource(new DirectoryFiles(Mount, names, persist: false), PageSize, pages);
        var meter = new UsageMeter(OptionRules.EffectiveCapacity(options.Capacity, device));
        _allocator = new RegionAllocator(meter, PageSize, source, pages, counters, log);

        HugePagePool pool = HugePagePool.Read(PageSize);
        log.LogInformation("Device {Device}: regions in {Size} huge pages ({Where}, claimed by {Claim}), capacity {Capacity}; {Pool}",
            device.Name, Sizes.Prose(PageSize), Mount ?? "memfd", Claim == HugePageClaim.Reserve ? "reservation" : "fallocate",
            Sizes.Prose(meter.Capacity), pool);
        long needed = (long)(meter.Capacity / PageSize);
        if (pool.Available + pool.Overcommit < needed)
            log.LogWarning("Device {Device}: the capacity needs {Needed} pages but {Pool}; allocations will be refused before the capacity is reached; {How}",
                device.Name, needed, pool, pool.HowToGrowPool(needed - pool.Available - pool.Overcommit));
    }

    /// <summary>How region pages are claimed at ALLOC.</summary>
    public HugePageClaim Claim { get; }

    /// <summary>The hugetlbfs mount region files are created in, or null for memfds.</summary>
    public string? Mount { get; }

    /// <inheritdoc />
    public ulong PageSize { get; }

    /// <inheritdoc />
    public MemoryUsage Usage => _allocator.Meter.Usage;

    /// <summary>True with <see cref="HugePageClaim.Fallocate"/>, which zeroes every huge page of the
    /// region at ALLOC (milliseconds for a large region), so the claim runs off the device's loop.
    /// A reservation takes a few microseconds whatever the size and stays on the loop.</summary>
    public bool AllocatesOffLoop => Claim == HugePageClaim.Fallocate;

    /// <inheritdoc />
    public IMemoryBlock? TryAllocate(ulong length, ulong token, out Refusal refusal) =>
        _allocator.TryAllocate(length, token, out refusal);

    /// <summary>Huge-page regions do not persist: always empty.</summary>
    /// <returns>An empty list.</returns>
    public IReadOnlyList<RecoveredBlock> Recover() =>
        Interlocked.Exchange(ref _recovered, 1) == 0 ? [] : throw new InvalidOperationException("Recover is called once, at start-up");

    /// <summary>Stops allocation. Blocks already handed out stay valid (they are the caller's).</summary>
    public void Dispose() => _allocator.Dispose();

    private static string DescribePoolShortage(ulong pageSize, ulong length)
    {
        HugePagePool pool = HugePagePool.Read(pageSize);
        long pages = (long)(length / pageSize);
        return $"not enough {Sizes.Prose(pageSize)} huge pages for {Sizes.Prose(length)} ({pages} pages): {pool}; {pool.HowToGrowPool(pages - pool.Available)}";
    }

    private sealed class MemfdSource(RegionNames names, ulong pageSize, PageClaim pages) : IRegionFileSource
    {
        private const int MemfdNameMax = 249;

        public PendingFile? Create(ulong token, out string? failure)
        {
            string name = names.Region(token);
            failure = null;
            return new PendingFile(MemFd.Create(name.Length <= MemfdNameMax ? name : name[^MemfdNameMax..], 0, pageSize));
        }

        public string DescribeClaimFailure(Errno errno, ulong length) => errno is Errno.ENOSPC or Errno.ENOMEM
            ? DescribePoolShortage(pageSize, length)
            : $"{pages.Operation} {Sizes.Prose(length)} of huge pages failed: {Posix.Describe(errno)}";
    }

    private sealed class MountSource(DirectoryFiles files, ulong pageSize, PageClaim pages) : IRegionFileSource
    {
        public PendingFile? Create(ulong token, out string? failure) => files.Create(token, out failure);

        public string DescribeClaimFailure(Errno errno, ulong length)
        {
            if (errno is not (Errno.ENOSPC or Errno.ENOMEM))
                return $"{pages.Operation} {Sizes.Prose(length)} in {files.Directory} failed: {Posix.Describe(errno)}";
            // A mount with size= has its own limit, which reservations count against too; statfs
            // reports it (f_blocks is 0 without one).
            if (Posix.TryStatFs(files.Directory, out Posix.StatFs fs) && fs.Blocks != 0 && fs.BlocksFree < length / pageSize)
                return $"the hugetlbfs mount {files.Directory} is full: {fs.BlocksFree} of {fs.Blocks} pages free, {length / pageSize} needed; raise its size= option";
            return DescribePoolShortage(pageSize, length);
        }
    }
}
