using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Memory.File;
using Vism.Memory.Hugetlb;
using Vism.Native;

namespace Vism.Benchmarks;

/// <summary>
/// What one ALLOC costs the memory backend, by region size (1 MiB vs 64 MiB; hugetlb's smallest
/// region is 2 MiB). <see cref="Allocate"/> is TryAllocate alone: create the region's file and claim
/// every page (fallocate, or for hugetlb by default a reservation; 8 per iteration, released
/// between iterations). <see cref="AllocateAndRelease"/> adds the release (hole punch or truncate)
/// and close of a freed region. <see cref="AllocateTouchRelease"/> is a region whose every page
/// gets used: the claim, a mapping touching each 4 KiB page (the page faults, and for a reserved
/// huge page its zeroing), unmap, release. <see cref="ZeroWithMemset"/> is what clearing the
/// region from user space would cost instead (pages already present), for comparison.
/// Backends: <c>file-tmpfs</c> /dev/shm (4 KiB pages); <c>file-tmpfs-huge</c> a private tmpfs
/// mounted with huge=within_size (large folios; needs root); <c>file-disk</c> /var/tmp (ext4);
/// <c>hugetlb</c> 2 MiB pages by memfd, claimed by reservation (the default);
/// <c>hugetlb-fallocate</c> the same with <c>claim = "fallocate"</c>. The hugetlb backends add the
/// pages they need to the pool as root, and give them back.
/// Run (from the repository root, as root):
/// <c>dotnet run -c Release --project benchmarks/Vism.Benchmarks -- --filter '*MemoryBenchmarks*'</c>
/// </summary>
[MemoryDiagnoser(displayGenColumns: false)]
[InvocationCount(PerIteration, 1)]
public class MemoryBenchmarks
{
    private const int PerIteration = 8;
    private const ulong MiB = 1UL << 20;
    private const string HugeKnob = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    private readonly List<IMemoryBlock> _held = [];
    private IMemoryBackend _backend = null!;
    private string? _directory;
    private bool _mounted;
    private string? _hugePagesBefore;
    private Mapping? _scratch;
    private ulong _token;

    /// <summary>Where regions live.</summary>
    [Params("file-tmpfs", "file-tmpfs-huge", "file-disk", "hugetlb", "hugetlb-fallocate")]
    public string Backend { get; set; } = "";

    /// <summary>Region size in MiB (hugetlb uses 2 MiB, its smallest region, for 1).</summary>
    [Params(1, 64)]
    public int RegionMiB { get; set; }

    private bool Hugetlb => Backend.StartsWith("hugetlb", StringComparison.Ordinal);

    private ulong Length => Hugetlb ? Math.Max(2, (ulong)RegionMiB) * MiB : (ulong)RegionMiB * MiB;

    [GlobalSetup]
    public void Setup()
    {
        const int regions = PerIteration + 2; // held by Allocate, one cycling, the memset scratch
        var device = new DeviceDescription
        {
            Name = "bench", RegionSize = Length, NotifySize = 1, MaxRegions = regions,
            RegionsWindowSize = regions * Length, NotifyWindowSize = 4096,
        };
        var host = new HostDescription { Gid = 1, StateDirectory = "/tmp", SocketDirectory = "/tmp" };
        var counters = new NullCounters();
        if (Hugetlb)
        {
            _hugePagesBefore = File.ReadAllText(HugeKnob);
            File.WriteAllText(HugeKnob, (long.Parse(_hugePagesBefore.Trim()) + (long)(regions * Length / (2 * MiB))).ToString());
            var options = new HugetlbMemoryOptions { Claim = Backend == "hugetlb" ? HugePageClaim.Reserve : HugePageClaim.Fallocate };
            _backend = new HugetlbMemoryBackend(options, device, host, counters, NullLogger<HugetlbMemoryBackend>.Instance);
        }
        else
        {
            _directory = Backend switch
            {
                "file-disk" => $"/var/tmp/vism-bench-{Environment.ProcessId}",
                "file-tmpfs" => $"/dev/shm/vism-bench-{Environment.ProcessId}",
                _ => MountHugeTmpfs(regions * Length),
            };
            _backend = new FileMemoryBackend(new FileMemoryOptions { Directory = _directory }, device, host, counters, NullLogger<FileMemoryBackend>.Instance);
        }
        IMemoryBlock block = Take();
        _scratch = Mapping.Map(block.Handle, 0, Length);
        block.Dispose(); // the mapping keeps the file and its pages for ZeroWithMemset
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _scratch?.Dispose();
        _backend.Dispose();
        if (_mounted) Run("umount", _directory!);
        if (_directory is not null) Directory.Delete(_directory, recursive: true);
        if (_hugePagesBefore is not null) File.WriteAllText(HugeKnob, _hugePagesBefore);
    }

    /// <summary>ALLOC: a region's file, every page claimed.</summary>
    [Benchmark]
    public void Allocate() => _held.Add(Take());

    [IterationCleanup(Target = nameof(Allocate))]
    public void ReleaseHeld()
    {
        foreach (IMemoryBlock b in _held)
        {
            b.Release();
            b.Dispose();
        }
        _held.Clear();
    }

    /// <summary>ALLOC and free: claim, then punch and close.</summary>
    [Benchmark]
    public void AllocateAndRelease()
    {
        IMemoryBlock block = Take();
        block.Release();
        block.Dispose();
    }

    /// <summary>A region whose every page gets used: claim, map, touch each 4 KiB page, unmap, release.</summary>
    [Benchmark]
    public unsafe void AllocateTouchRelease()
    {
        IMemoryBlock block = Take();
        using (Mapping m = Mapping.Map(block.Handle, block.Offset, block.Length))
        {
            for (ulong o = 0; o < block.Length; o += 4096)
                *(byte*)(m.Address + (nint)o) = 1;
        }
        block.Release();
        block.Dispose();
    }

    /// <summary>Clearing a region of this size with a memset, for comparison.</summary>
    [Benchmark]
    public void ZeroWithMemset() => _scratch!.Span(0, (int)Length).Clear();

    private IMemoryBlock Take() =>
        _backend.TryAllocate(Length, ++_token, out Refusal failure) ?? throw new InvalidOperationException(failure.Detail);

    private string MountHugeTmpfs(ulong size)
    {
        string dir = $"/tmp/vism-bench-huge-{Environment.ProcessId}";
        Directory.CreateDirectory(dir);
        Run("mount", "-t", "tmpfs", "-o", $"size={size},huge=within_size,mode=0700", "none", dir);
        _mounted = true;
        return dir;
    }

    private static void Run(string file, params string[] args)
    {
        using Process p = Process.Start(file, args);
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed (root needed)");
    }

    private sealed class NullCounters : IDeviceCounters
    {
        public void Increment(string name, long by = 1) { }

        public long Get(string name) => 0;
    }
}
