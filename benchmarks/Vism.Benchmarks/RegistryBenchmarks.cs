using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Core.Registry;
using Vism.Native;

namespace Vism.Benchmarks;

/// <summary>
/// The host registry with 1,000 and with 100,000 live regions spread over devices (100 per
/// device). The claim to check: an operation does not get slower because many regions are live
/// (token lookup is O(1)). <see cref="AttachAndRelease"/> works on 64 of the regions, as a device
/// works on its own few; <see cref="AttachAndReleaseScattered"/> visits all of them in random
/// order, which at 100,000 is bound by cache and TLB misses, as <see cref="BareDictionaryLookupScattered"/>
/// shows for a plain dictionary of the same size.
/// Run: dotnet run -c Release --project benchmarks/Vism.Benchmarks -- --filter '*RegistryBenchmarks*'
/// </summary>
[MemoryDiagnoser]
public class RegistryBenchmarks
{
    private const int PerDevice = 100;
    private const uint Hot = 64;
    private EventLoop _loop = null!;
    private IsmHost _host = null!;
    private IsmDevice _attacher = null!;
    private ulong[] _tokens = [];
    private ulong[] _unknown = [];
    private readonly Dictionary<ulong, object> _bare = new();
    private uint _next;

    /// <summary>Live regions in the registry.</summary>
    [Params(1_000, 100_000)]
    public int LiveRegions { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _loop = new EventLoop("bench");
        _host = new IsmHost(new IsmHostOptions { Gid = 1, Sharing = SharingMode.Multi }, NullLoggerFactory.Instance);
        DeviceDescription layout = DeviceLayout.Compute("d", Virtio.IsmDeviceId, 256 << 20, 1 << 20, 1);
        _attacher = _host.AddDevice(layout with { Name = "attacher" }, _loop, new InMemoryBackend(0), null, new DeviceCounters());
        _tokens = new ulong[LiveRegions];
        IsmDevice? owner = null;
        for (int n = 0; n < LiveRegions; n++)
        {
            if (n % PerDevice == 0)
                owner = _host.AddDevice(layout with { Name = $"d{n / PerDevice}" }, _loop, new InMemoryBackend(0), null, new DeviceCounters());
            _tokens[n] = _host.NewToken();
            _host.CreateRegion(owner!, n % PerDevice, _tokens[n], new EmptyBlock(), 4096);
        }
        // Visit tokens in a scrambled order so the lookups do not walk memory sequentially.
        var random = new Random(1);
        random.Shuffle(_tokens);
        foreach (ulong t in _tokens)
            _bare[t] = new object();
        var live = new HashSet<ulong>(_tokens);
        _unknown = new ulong[_tokens.Length];
        for (int i = 0; i < _unknown.Length; i++)
        {
            do _unknown[i] = (ulong)random.NextInt64();
            while (live.Contains(_unknown[i]));
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _host.Dispose();
        _loop.Dispose();
    }

    /// <summary>ATTACH's registry work (lookup, permission and sharing checks, reference) plus
    /// DETACH's release, cycling over 64 live regions.</summary>
    [Benchmark(Baseline = true)]
    public void AttachAndRelease() => AttachRelease(_tokens[_next++ % Hot]);

    /// <summary>The same over every live region in random order.</summary>
    [Benchmark]
    public void AttachAndReleaseScattered() => AttachRelease(_tokens[_next++ % (uint)_tokens.Length]);

    private void AttachRelease(ulong token)
    {
        _host.TryAttach(_attacher, 0, token, out Region? region, out _);
        _host.Release(region!, _attacher, 0, detach: true);
    }

    /// <summary>ATTACH with tokens nobody has, in random order.</summary>
    [Benchmark]
    public Refusal? AttachUnknownToken() => _host.TryAttach(_attacher, 0, _unknown[_next++ % (uint)_unknown.Length], out _, out _);

    /// <summary>For scale: a plain Dictionary lookup of the same size, every key in random order.</summary>
    [Benchmark]
    public object BareDictionaryLookupScattered() => _bare[_tokens[_next++ % (uint)_tokens.Length]];

    /// <summary>Drawing a fresh token (keyed 64-bit permutation, checked against live tokens).</summary>
    [Benchmark]
    public ulong NewToken() => _host.NewToken();

    private sealed class EmptyBlock : IMemoryBlock
    {
        public SafeFileHandle Handle { get; } = new(IntPtr.Zero, ownsHandle: false);
        public ulong Offset => 0;
        public ulong Length => 4096;
        public void Release()
        {
        }

        public void Dispose()
        {
        }
    }
}
