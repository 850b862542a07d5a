using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Driver;
using Vism.Driver.Mmio;
using Vism.Mmio;
using Vism.Native;
using Vism.Transport.Mmio;

namespace Vism.Benchmarks;

/// <summary>
/// The MMIO transport's costs, to compare with each other in one run: a register read in the state
/// machine, the same read as a socket round trip, a trapped notify write (posted and confirmed),
/// and a whole ALLOC + DETACH control request pair (two controlq round trips plus MAP and UNMAP to
/// the VMM). Command: see docs/benchmarks.md.
/// </summary>
[MemoryDiagnoser]
public class MmioBenchmarks
{
    private EventLoop _loop = null!;
    private IsmHost _host = null!;
    private IsmDevice _device = null!;
    private InMemoryBackend _memory = null!;
    private MmioTransport _transport = null!;
    private MmioVmmClient _vmm = null!;
    private IsmClient _guest = null!;
    private MmioRegisters _registers = null!;
    private string _dir = null!;
    private ulong _notifySlot;

    [GlobalSetup]
    public void Setup()
    {
        _dir = Path.Combine("/tmp", $"vism-bench-mmio-{Environment.ProcessId}");
        Directory.CreateDirectory(_dir);
        _loop = new EventLoop("bench-mmio");
        _host = new IsmHost(new IsmHostOptions { Gid = 1 }, NullLoggerFactory.Instance);
        DeviceDescription description = DeviceLayout.Compute("bench", Virtio.IsmDeviceId, 16 << 20, 1 << 20, 1);
        _memory = new InMemoryBackend(64 << 20);
        var counters = new DeviceCounters();
        _device = _host.AddDevice(description, _loop, _memory, null, counters);
        var hostDescription = new HostDescription { Gid = 1, StateDirectory = _dir, SocketDirectory = _dir };
        _transport = new MmioTransport(new MmioOptions(), description, hostDescription, _loop, counters, NullLogger<MmioTransport>.Instance);
        _loop.InvokeAsync(() => _transport.Start(_device)).GetAwaiter().GetResult();
        _vmm = MmioVmmClient.Connect(_transport.Endpoint);
        _guest = IsmClient.Start(_vmm);
        AllocReply held = _guest.Alloc(4096); // a region whose notify slot the notify benchmark writes
        _notifySlot = held.Offset / _guest.RegionSize * _guest.NotifySize;
        _registers = new MmioRegisters(_device, () => { }, new DeviceCounters(), NullLogger.Instance);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _guest.Dispose();
        _vmm.Dispose();
        _transport.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _host.RemoveDevice(_device);
        _host.Dispose();
        _memory.Dispose();
        _loop.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>A config-space read (devid, low half) in the register state machine alone: what an
    /// in-process VMM pays on the loop.</summary>
    [Benchmark(Baseline = true)]
    public uint ConfigRead_StateMachine()
    {
        _registers.Read(MmioRegister.Config + 8, 4, out uint v);
        return v;
    }

    /// <summary>The same read trapped and forwarded over the socket (READ + reply, three thread hops).</summary>
    [Benchmark]
    public uint ConfigRead_Socket() => _vmm.ReadRegister(MmioRegister.Config + 8);

    /// <summary>A trapped NOTIFY write to a live region's slot, confirmed by the device (round trip).</summary>
    [Benchmark]
    public MmioStatusResult Notify_SocketConfirmed() => new(_vmm.TryWriteNotify(_notifySlot));

    /// <summary>ALLOC then DETACH of a 4 KiB region: two controlq requests, a MAP and an UNMAP.</summary>
    [Benchmark]
    public byte AllocDetach_Socket()
    {
        AllocReply r = _guest.Alloc(4096);
        return _guest.Detach(r.Offset);
    }

    /// <summary>Wraps the status so BenchmarkDotNet consumes a value.</summary>
    public readonly record struct MmioStatusResult(Vism.Mmio.MmioStatus Status);
}
