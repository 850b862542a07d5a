using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Driver;
using Vism.Driver.VhostUser;
using Vism.Native;
using Vism.Transport.VhostUser;
using Vism.VhostUser;

namespace Vism.Benchmarks;

/// <summary>
/// The vhost-user transport's costs, to compare with each other in one run: a main-socket request
/// round trip, a controlq round trip answered ERR (kick eventfd -> device loop -> used ring -> call
/// eventfd), an ALLOC + DETACH pair (two controlq round trips plus SHMEM_MAP and SHMEM_UNMAP on the
/// backend channel), a NOTIFY write until the peer's vector fires (bounded by the poll interval),
/// and one idle scan of 1023 notify slots (what polling costs per tick). Two ISM devices from Core,
/// in-memory backing, each served by the vhost-user transport on its own loop and driven by
/// <see cref="VhostUserFrontend"/> + <see cref="IsmClient"/>. Command: see docs/benchmarks.md.
/// </summary>
[MemoryDiagnoser]
public class VhostUserBenchmarks
{
    private const ulong MiB = 1 << 20;
    private readonly List<IAsyncDisposable> _transports = [];
    private readonly List<IDisposable> _disposables = [];
    private EventLoop[] _loops = [];
    private IsmHost _host = null!;
    private IsmClient _a = null!;
    private IsmClient _b = null!;
    private ulong _regionA;
    private Mapping _idleWindow = null!;
    private string _dir = null!;

    [GlobalSetup]
    public void Setup()
    {
        _dir = Path.Combine("/tmp", $"vism-bench-vu-{Environment.ProcessId}");
        Directory.CreateDirectory(_dir);
        _loops = [new EventLoop("bench-vu-0"), new EventLoop("bench-vu-1")];
        _host = new IsmHost(new IsmHostOptions { Gid = 1 }, NullLoggerFactory.Instance);
        _a = Connect("a", _loops[0]);
        _b = Connect("b", _loops[1]);
        AllocReply alloc = _a.Alloc(4096);
        AttachReply attach = _b.Attach(alloc.Token);
        if (!alloc.Ok || !attach.Ok || _b.EventVector(attach.Offset, 0) != IsmControl.AckOk)
            throw new InvalidOperationException("benchmark set-up failed");
        _regionA = alloc.Offset;
        var notifyFd = MemFd.Create("bench-notify", MiB);
        _disposables.Add(notifyFd);
        _idleWindow = Mapping.Map(notifyFd, 0, MiB);
    }

    private IsmClient Connect(string name, EventLoop loop)
    {
        DeviceDescription description = DeviceLayout.Compute(name, Virtio.IsmDeviceId, 16 * MiB, MiB, 1);
        var counters = new DeviceCounters();
        var memory = new InMemoryBackend(64 * MiB);
        _disposables.Add(memory);
        IsmDevice device = _host.AddDevice(description, loop, memory, new BenchVectorChannel(), counters);
        var host = new HostDescription { Gid = 1, StateDirectory = _dir, SocketDirectory = _dir };
        var transport = new VhostUserTransport(new VhostUserOptions { Vectors = 1 }, description, host, loop, counters,
            NullLogger<VhostUserTransport>.Instance);
        loop.InvokeAsync(() => transport.Start(device)).GetAwaiter().GetResult();
        _transports.Add(transport);
        var ram = new GuestRam(4 * MiB);
        _disposables.Add(ram);
        VhostUserFrontend frontend = VhostUserFrontend.Connect(transport.Endpoint, ram, new VhostUserFrontendOptions { VectorCount = 1 });
        return IsmClient.Start(frontend, new IsmClientOptions { EventVq = false });
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _a.Dispose();
        _b.Dispose();
        foreach (IAsyncDisposable t in _transports) t.DisposeAsync().AsTask().GetAwaiter().GetResult();
        foreach (IDisposable d in _disposables) d.Dispose();
        _idleWindow.Dispose();
        _host.Dispose();
        foreach (EventLoop l in _loops) l.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>GET_FEATURES: one main-socket round trip (frontend thread -> device loop -> frontend).</summary>
    [Benchmark(Baseline = true)]
    public int Request_RoundTrip() => ((VhostUserFrontend)_a.Transport).Request(FrontendRequest.GetFeatures, []).Length;

    /// <summary>DETACH of an offset holding no region: a controlq round trip answered ERR.</summary>
    [Benchmark]
    public byte ControlRequest_Err() => _a.Detach(15 * MiB);

    /// <summary>ALLOC then DETACH of a 4 KiB region: two controlq round trips, SHMEM_MAP and SHMEM_UNMAP.</summary>
    [Benchmark]
    public byte AllocDetach()
    {
        AllocReply r = _a.Alloc(4096);
        return _a.Detach(r.Offset);
    }

    /// <summary>A's NOTIFY-window store until B's bound vector fires (bounded by the poll interval,
    /// <c>notify-poll-fast</c> = 50 µs while active).</summary>
    [Benchmark]
    public bool Notify_ToPeerVector()
    {
        _a.Notify(_regionA);
        return _b.WaitVector(0, TimeSpan.FromSeconds(5));
    }

    /// <summary>One scan of 1023 idle one-byte notify slots: the cost of a poll tick that finds nothing.</summary>
    [Benchmark]
    public int NotifyScan_1023IdleSlots() => NotifyPoller.ScanSlots(_idleWindow.Address, _idleWindow.Length, 1, _idleSnapshot, 1023, null);

    private readonly byte[] _idleSnapshot = new byte[1023];

    /// <summary>Fires the bound vector on updates (the real channel is Events.Irq).</summary>
    private sealed class BenchVectorChannel : IEventChannel
    {
        private readonly Dictionary<ulong, int> _vectors = [];
        private IEventContext? _context;
        public ulong Features => Abstractions.Features.Mask(Abstractions.Features.IsmEventIrq);
        public int QueueCount => 0;
        public void Activate(IEventContext context) => _context = context;
        public void Deactivate() { _context = null; _vectors.Clear(); }
        public void OnRegionUpdated(ulong offset) { if (_vectors.TryGetValue(offset, out int v)) _context?.SignalVector(v); }
        public void OnRegionDetached(ulong offset) => _vectors.Remove(offset);
        public bool TryBindVector(ulong offset, ulong vector, out string? failure)
        {
            failure = null;
            _vectors[offset] = (int)vector;
            return true;
        }
        public void OnQueueNotified(int queueIndex) { }
        public void Dispose() { }
    }
}
