using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Driver;
using Vism.Native;
using Vism.Mmio;
using R = Vism.Mmio.MmioRegister;

namespace Vism.Transport.Mmio.Tests;

/// <summary>The in-process entry point: a .NET VMM drives <see cref="MmioSession"/> directly, with no socket.</summary>
public sealed class MmioSessionTests : IDisposable
{
    private readonly EventLoop _loop = new("mmio-session-test");
    private readonly FakeVirtioDevice _device;
    private readonly TestCounters _counters = new();
    private readonly InProcessVmm _vmm = new();
    private readonly MmioSession _session;

    public MmioSessionTests()
    {
        _device = MmioTestDevice.Create(_loop);
        _session = new MmioSession(_device, _vmm, _counters, NullLogger.Instance);
    }

    public void Dispose()
    {
        _loop.Dispose();
        _vmm.Dispose();
    }

    private Task<T> On<T>(Func<T> f) => _loop.InvokeAsync(f);

    private uint Read(uint offset)
    {
        Assert.Equal(MmioAccessResult.Ok, _session.Read(offset, 4, out uint v));
        return v;
    }

    private void Write(uint offset, uint value) => Assert.Equal(MmioAccessResult.Ok, _session.Write(offset, 4, value));

    [Fact]
    public async Task AnEmbeddingVmmDrivesTheSameRegisterWindowWithoutASocket()
    {
        QueueSettings rings = new(64, _vmm.Ram.Allocate(1024, 16), _vmm.Ram.Allocate(134, 2), _vmm.Ram.Allocate(518, 4));
        await On(() =>
        {
            _session.Attach();
            Assert.Equal(R.Magic, Read(R.MagicValue));
            Write(R.Status, 0);
            Write(R.Status, 1);
            Write(R.Status, 3);
            Write(R.DriverFeaturesSel, 1);
            Write(R.DriverFeatures, 1);
            Write(R.Status, 11);
            Write(R.QueueSel, 0);
            Write(R.QueueNum, rings.Size);
            Write(R.QueueDescLow, (uint)rings.DescriptorTable);
            Write(R.QueueDriverLow, (uint)rings.AvailRing);
            Write(R.QueueDeviceLow, (uint)rings.UsedRing);
            Write(R.QueueReady, 1);
            Write(R.Status, 15);
            return true;
        });

        Assert.Equal((0, rings), Assert.Single(_device.StartedQueues));
        Assert.Same(_session, await On(() => _device.Services));
        Assert.Same(_vmm.Ram, await On(() => _device.Services!.Memory));

        await On(() => { _device.Services!.SignalQueue(0); return true; });
        Assert.Equal(1, _vmm.Interrupts);
        Assert.Equal(R.InterruptUsedBuffer, await On(() => Read(R.InterruptStatus)));

        await On(() => _session.Notify(2, 1));
        Assert.Equal([2ul], _device.NotifyWrites);
    }

    [Fact]
    public async Task CallingTheSessionOffItsLoopIsAnError()
    {
        await On(() => { _session.Attach(); return true; });
        Assert.Throws<InvalidOperationException>(() => _session.Read(R.MagicValue, 4, out _));
    }

    [Fact]
    public async Task MapsAndUnmapsReachTheEmbeddingVmmInOrder()
    {
        using var block = new MemfdBlock(0x10000);
        await On(() => { _session.Attach(); return true; });

        Assert.Null(await _loop.InvokeAsync(async () => await _device.Services!.MapAsync(ShmId.Regions, 0x30000, block, 0x10000, false)));
        Assert.Equal([$"map Regions+0x30000 0x10000 ro"], _vmm.Calls);
        Assert.Equal(1, await On(() => _session.MappingCount));

        // A driver reset drops what is still mapped.
        await On(() => _session.Write(R.Status, 4, 0));
        await WaitFor(() => _vmm.Calls.Count == 2);
        Assert.Equal("unmap Regions+0x30000 0x10000", _vmm.Calls[1]);
        Assert.Equal(0, await On(() => _session.MappingCount));
    }

    [Fact]
    public async Task DetachingDisconnectsTheDeviceAndFailsAMapInFlight()
    {
        using var block = new MemfdBlock(0x10000);
        _vmm.HoldMaps = true;
        await On(() => { _session.Attach(); return true; });
        Task<string?> map = _loop.InvokeAsync(async () => await _device.Services!.MapAsync(ShmId.Regions, 0, block, 0x10000, true));
        await WaitFor(() => _vmm.Calls.Count == 1);

        await On(() => { _session.Detach(); return true; });
        _vmm.ReleaseMaps();

        Assert.NotNull(await map);
        Assert.Equal(1, _device.DisconnectCount);
        Assert.False(await On(() => _session.CanMap));
        Assert.Null(await _loop.InvokeAsync(async () => await _session.UnmapAsync(ShmId.Regions, 0, 0x10000))); // nothing is mapped any more
    }

    private static async Task WaitFor(Func<bool> condition)
    {
        long deadline = Environment.TickCount64 + 20_000;
        while (!condition())
        {
            if (Environment.TickCount64 > deadline) throw new TimeoutException();
            await Task.Delay(10);
        }
    }

    /// <summary>The smallest embedding VMM: guest RAM, a counted interrupt line and a call log.</summary>
    private sealed class InProcessVmm : IMmioVmm, IDisposable
    {
        private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _interrupts;

        public GuestRam Ram { get; } = new(1 << 20);
        public List<string> Calls { get; } = [];
        public bool HoldMaps { get; set; }
        public int Interrupts => Volatile.Read(ref _interrupts);
        public IGuestMemory Memory => Ram;
        public int VectorCount => 0;
        public void RaiseInterrupt() => Interlocked.Increment(ref _interrupts);
        public void RaiseVector(int vector) { }
        public void ReleaseMaps() => _release.TrySetResult();

        public async ValueTask<string?> MapAsync(WindowMapping mapping, SafeHandle fd)
        {
            lock (Calls) Calls.Add($"map {mapping.Id}+0x{mapping.ShmOffset:x} 0x{mapping.Length:x} {(mapping.Writable ? "rw" : "ro")}");
            if (HoldMaps) await _release.Task;
            return null;
        }

        public ValueTask<string?> UnmapAsync(ShmId id, ulong shmOffset, ulong length)
        {
            lock (Calls) Calls.Add($"unmap {id}+0x{shmOffset:x} 0x{length:x}");
            return ValueTask.FromResult<string?>(null);
        }

        public void Dispose() => Ram.Dispose();
    }
}
