using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Memory.Shared;
using Vism.Native;

namespace Vism.Memory.File;

/// <summary>
/// Memory plugin <c>file</c>: every region is a file of its own in <see cref="FileMemoryOptions.Directory"/>,
/// claimed with fallocate when allocated (a full file system is a refused allocation, never a
/// SIGBUS later) and hole-punched when released. Without <see cref="FileMemoryOptions.Persist"/>
/// the files have no name (O_TMPFILE), so nothing is ever left in the directory; with it each
/// region is <c>&lt;prefix&gt;&lt;device&gt;-&lt;token&gt;.region</c> and <see cref="Recover"/> finds it again.
/// </summary>
public sealed class FileMemoryBackend : IMemoryBackend
{
    private readonly RegionAllocator _allocator;
    private readonly DirectoryFiles _files;
    private readonly IDeviceCounters _counters;
    private readonly ILogger _log;
    private int _recovered;

    /// <summary>Creates the backend, creating the directory if needed and checking that its file
    /// system can claim and punch (fallocate). Throws when it cannot serve.</summary>
    /// <param name="options">Validated options.</param>
    /// <param name="device">The device this backend serves.</param>
    /// <param name="host">The host (its state directory resolves a relative directory).</param>
    /// <param name="counters">The device's counters (allocation failures are counted there).</param>
    /// <param name="log">Logger.</param>
    public FileMemoryBackend(FileMemoryOptions options, DeviceDescription device, HostDescription host,
                             IDeviceCounters counters, ILogger<FileMemoryBackend> log)
    {
        OptionRules.ThrowIfInvalid(options, "file", device, host);
        _counters = counters;
        _log = log;
        Directory = options.ResolveDirectory(host);
        Persist = options.Persist;
        PageSize = (ulong)Environment.SystemPageSize;
        RegionDirectory.Prepare(Directory);
        _files = new DirectoryFiles(Directory, new RegionNames(options.Prefix, device.Name), Persist);
        ProbeFileSystem();
        var meter = new UsageMeter(OptionRules.EffectiveCapacity(options.Capacity, device));
        _allocator = new RegionAllocator(meter, PageSize, new Source(_files), PageClaim.Fallocate, counters, log);
        DescribeStart(device.Name, meter.Capacity);
    }

    /// <summary>The absolute directory of the region files.</summary>
    public string Directory { get; }

    /// <summary>Whether regions persist across restarts.</summary>
    public bool Persist { get; }

    /// <inheritdoc />
    bool IMemoryBackend.PersistsRegions => Persist;

    /// <inheritdoc />
    public ulong PageSize { get; }

    /// <inheritdoc />
    public MemoryUsage Usage => _allocator.Meter.Usage;

    /// <summary>Always true: claiming a region's pages zeroes them (tmpfs) or allocates disk blocks,
    /// and a persistent region is fsynced, so the claim runs off the device's loop.</summary>
    public bool AllocatesOffLoop => true;

    /// <inheritdoc />
    public IMemoryBlock? TryAllocate(ulong length, ulong token, out Refusal refusal) =>
        _allocator.TryAllocate(length, token, out refusal);

    /// <summary>With <see cref="FileMemoryOptions.Persist"/>: opens every committed region file of
    /// this device and returns it with its token (contents intact), and removes temporary files a
    /// crash left mid-allocation. Files that are not whole pages, or whose pages can no longer be
    /// claimed, are logged and left alone. Without persist: nothing.</summary>
    /// <returns>The recovered regions; the caller owns the blocks.</returns>
    public IReadOnlyList<RecoveredBlock> Recover()
    {
        if (Interlocked.Exchange(ref _recovered, 1) != 0)
            throw new InvalidOperationException("Recover is called once, at start-up");
        if (!Persist) return [];
        var found = new List<RecoveredBlock>();
        foreach (string path in System.IO.Directory.EnumerateFiles(Directory).Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileName(path);
            if (_files.Names.IsTemporary(name))
            {
                Syscall.unlink(path);
                _counters.Increment("memory.recover.removed-temporary");
                _log.LogInformation("Removed {File}: an allocation interrupted by a crash, never a region", path);
            }
            else if (_files.Names.TryParseRegion(name, out ulong token))
            {
                IMemoryBlock? block = Reopen(path, token);
                if (block is not null) found.Add(new RecoveredBlock(token, block));
            }
        }
        _log.LogInformation("Recovered {Count} regions ({Bytes}) from {Directory}",
            found.Count, Sizes.Prose(found.Aggregate(0UL, (sum, r) => sum + r.Block.Length)), Directory);
        return found;
    }

    private RegionBlock? Reopen(string path, ulong token)
    {
        SafeFileHandle? handle = Posix.TryOpen(path, Posix.O_RDWR | Posix.O_NOFOLLOW, 0, out Errno e);
        string? problem = handle is null ? $"cannot open it: {Posix.Describe(e)}" : null;
        ulong length = 0;
        if (handle is not null)
        {
            PosixException.Check(Syscall.fstat(Fd.Raw(handle), out Stat st), "fstat");
            length = (ulong)st.st_size;
            if ((st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG)
                problem = "it is not a regular file";
            else if (length == 0 || length % PageSize != 0)
                problem = $"its size {length} is not a positive multiple of {Sizes.Prose(PageSize)}";
            else if (Posix.RecordedLength(handle, out Errno x) is not { } recorded)
                problem = $"it carries no recorded length ({Posix.LengthAttribute}: {Posix.Describe(x)}), so its size cannot be trusted";
            else if (recorded != length)
                problem = $"its size {length} differs from the {recorded} bytes it was allocated with: it was resized by someone else (tampered)";
            else if (Posix.Claim(handle, length) is { } claim)
                problem = $"its pages cannot be claimed again: {Posix.Describe(claim)}";
        }
        if (problem is not null)
        {
            handle?.Dispose();
            _counters.Increment("memory.recover.skipped");
            _log.LogWarning("Not recovering {File} (token {Token:x16}): {Problem}; the file is left as it is", path, token, problem);
            return null;
        }
        _allocator.Meter.Add(length);
        return new RegionBlock(handle!, length, token, path, PageClaim.Fallocate, _allocator.Meter, _counters, _log);
    }

    /// <summary>Claims and punches one page in an unnamed file, so a file system that cannot
    /// (some network and FUSE file systems) is reported at start-up, not at the first ALLOC.</summary>
    private void ProbeFileSystem()
    {
        PendingFile probe = new DirectoryFiles(Directory, _files.Names, persist: false).Create(0, out string? failure)
            ?? throw new InvalidOperationException(failure);
        using SafeFileHandle handle = probe.Handle;
        if (Posix.Claim(handle, PageSize) is { } e)
            throw new InvalidOperationException($"the file system of {Directory} cannot claim space with fallocate: {Posix.Describe(e)}; use tmpfs, ext4, xfs or btrfs");
        if (Persist && Posix.RecordLength(handle, PageSize) is { } x)
            throw new InvalidOperationException($"the file system of {Directory} cannot record a persistent region's length in a user extended attribute ({Posix.LengthAttribute}): {Posix.Describe(x)}; use tmpfs, ext4, xfs or btrfs");
        try
        {
            MemFd.PunchHole(handle, 0, PageSize);
        }
        catch (PosixException ex)
        {
            throw new InvalidOperationException($"the file system of {Directory} cannot punch holes: {Posix.Describe(ex.Errno)}; use tmpfs, ext4, xfs or btrfs", ex);
        }
    }

    private void DescribeStart(string device, ulong capacity)
    {
        Posix.TryStatFs(Directory, out Posix.StatFs fs);
        bool tmpfs = fs.Type == Posix.TmpfsMagic;
        _log.LogInformation("Device {Device}: regions in {Directory} ({Kind}), capacity {Capacity}, {Persist}",
            device, Directory, tmpfs ? "tmpfs" : "disk", Sizes.Prose(capacity),
            !Persist ? "not persisted" : tmpfs ? "persisted across host restarts (not reboots: tmpfs)" : "persisted");
        ulong available = fs.BlocksAvailable * (ulong)fs.BlockSize;
        if (available < capacity)
            _log.LogWarning("Device {Device}: {Directory} has {Available} available, less than the capacity {Capacity}; allocations will be refused before the capacity is reached",
                device, Directory, Sizes.Prose(available), Sizes.Prose(capacity));
    }

    /// <summary>Stops allocation. Blocks already handed out stay valid (they are the caller's);
    /// files of persisted regions stay on disk.</summary>
    public void Dispose() => _allocator.Dispose();

    private sealed class Source(DirectoryFiles files) : IRegionFileSource
    {
        public PendingFile? Create(ulong token, out string? failure) => files.Create(token, out failure);

        public string DescribeClaimFailure(Errno errno, ulong length) => errno switch
        {
            Errno.ENOSPC => $"no space left in {files.Directory} for {Sizes.Prose(length)} ({Available()} available)",
            Errno.EDQUOT => $"disk quota exhausted in {files.Directory} for {Sizes.Prose(length)}",
            Errno.EFBIG => $"{Sizes.Prose(length)} exceeds the largest file {files.Directory} allows",
            _ => $"fallocate of {Sizes.Prose(length)} in {files.Directory} failed: {Posix.Describe(errno)}",
        };

        private string Available() =>
            Posix.TryStatFs(files.Directory, out Posix.StatFs fs) ? Sizes.Prose(fs.BlocksAvailable * (ulong)fs.BlockSize) : "unknown";
    }
}
