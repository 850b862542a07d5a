using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.PluginKit;

namespace Vism.Sdk.Tests;

/// <summary>What a plugin relies on from Vism.PluginKit, on real memfds, mappings and eventfds.</summary>
public sealed class PluginKitTests
{
    private const ulong Page = 4096;

    [Fact]
    public void MemFdBlock_Release_PeerMappingReadsZerosAndAccountingReturns()
    {
        long used = 4 * (long)Page;
        using MemFdBlock block = MemFdBlock.TryCreate("kit-test", 4 * Page, out string? failure, onReleased: b => used -= (long)b)!;
        Assert.Null(failure);
        using var peer = SharedMapping.Map(block.Handle, 0, block.Length);
        peer.Span(Page, 5).Fill(0xab);
        Assert.Equal(0xab, peer.Span(Page, 1)[0]);

        block.Release();
        block.Release();

        Assert.All(peer.AsSpan().ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(0, used);
    }

    [Fact]
    public void MemFdBlock_Created_IsSealedAgainstShrinking()
    {
        using MemFdBlock block = MemFdBlock.TryCreate("kit-seal", Page, out _)!;

        Assert.True(MemFd.GetSeals(block.Handle).HasFlag(FileSeals.Shrink));
        var ex = Assert.Throws<NativeCallException>(() => MemFd.Truncate(block.Handle, 0));
        Assert.Equal(1, ex.Errno); // EPERM: a peer's mapping can never lose its pages to a truncate
        Assert.Contains("ftruncate", ex.Message);
    }

    [Fact]
    public void TryClaim_BeyondASealedSize_FailsWithTheReason()
    {
        using SafeFileHandle fd = MemFd.Create("kit-claim", Page);
        MemFd.AddSeals(fd, FileSeals.Grow);

        Assert.False(MemFd.TryClaim(fd, 0, 2 * Page, out string? failure));
        Assert.Contains("fallocate(8192 bytes at 0)", failure);
        Assert.True(MemFd.TryClaim(fd, 0, Page, out failure));
        Assert.Null(failure);
    }

    [Fact]
    public void Create_HugePageSizeNotAPowerOfTwo_IsRefusedBeforeTheKernel()
    {
        Assert.Throws<ArgumentException>(() => MemFd.Create("kit-huge", 0, hugePageSize: 3 << 20));
    }

    [Fact]
    public void EventFd_SignalsAddUpUntilDrained()
    {
        using EventFd fd = EventFd.Create();
        Assert.Equal(0UL, fd.Drain());
        Assert.True(fd.Signal());
        Assert.True(fd.Signal(2));

        Assert.Equal(3UL, fd.Wait(TimeSpan.FromSeconds(5)));
        Assert.Equal(0UL, fd.Wait(TimeSpan.FromMilliseconds(20)));
        fd.Dispose();
        Assert.False(fd.Signal());
    }

    [Fact]
    public void SharedMapping_RangeOutsideTheMapping_Throws()
    {
        using SafeFileHandle fd = MemFd.Create("kit-map", Page);
        using var map = SharedMapping.Map(fd, 0, Page, writable: false);

        Assert.False(map.Writable);
        Assert.Throws<ArgumentOutOfRangeException>(() => map.Span(Page - 1, 2));
        map.Dispose();
        Assert.Throws<ObjectDisposedException>(() => map.Span(0, 1));
    }
}

/// <summary>The contract's defaults: a plugin that implements only what it must gets the
/// "unsupported / nothing" answers the core relies on.</summary>
public sealed class ContractDefaultTests
{
    private sealed class MinimalChannel : IEventChannel
    {
        public ulong Features => Abstractions.Features.Mask(Abstractions.Features.IsmEventVq);
        public void Activate(IEventContext context) { }
        public void Deactivate() { }
        public void OnRegionUpdated(RegionSlot region) { }
        public void Dispose() { }
    }

    /// <summary>A channel written against contract revision 1.0: offsets only, reasons as strings.</summary>
    private sealed class OffsetOnlyChannel : IEventChannel
    {
        public List<string> Calls { get; } = [];
        public ulong Features => Abstractions.Features.Mask(Abstractions.Features.IsmEventIrq);
        public void Activate(IEventContext context) { }
        public void Deactivate() { }
        public void OnRegionUpdated(ulong offset) => Calls.Add($"update 0x{offset:x}");
        public void OnRegionDetached(ulong offset) => Calls.Add($"detach 0x{offset:x}");
        public bool TryBindVector(ulong offset, ulong vector, out string? failure)
        {
            Calls.Add($"bind 0x{offset:x} {vector}");
            failure = vector == 0 ? null : "only vector 0";
            return vector == 0;
        }
        public void Dispose() { }
    }

    private sealed class MinimalBackend : IMemoryBackend
    {
        public ulong PageSize => 4096;
        public MemoryUsage Usage => default;
        public IMemoryBlock? TryAllocate(ulong length, ulong token, out string? failure) { failure = "none"; return null; }
        public void Dispose() { }
    }

    private sealed class MinimalTransport : ITransport
    {
        public string Endpoint => "minimal";
        public void Start(IVirtioDevice device) { }
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    [Fact]
    public void Defaults_MinimalPlugins_AnswerUnsupportedOrNothing()
    {
        IEventChannel channel = new MinimalChannel();
        IMemoryBackend backend = new MinimalBackend();
        ITransport transport = new MinimalTransport();

        Assert.Equal(0, channel.QueueCount);
        Assert.False(channel.TryBindVector(new RegionSlot(0, 0), 0, out Refusal refusal));
        Assert.Equal(new Refusal("event-vector.rejected", "this event channel binds no vectors"), refusal);
        channel.OnQueueNotified(1);
        channel.OnRegionDetached(new RegionSlot(0, 0));
        Assert.Empty(backend.Recover());
        Assert.False(backend.AllocatesOffLoop);
        Assert.Equal(0, transport.VectorCount);
    }

    [Fact]
    public void Defaults_OffsetOnlyChannel_GetsTheSlotsOffsetAndItsReasonAsARefusal()
    {
        var legacy = new OffsetOnlyChannel();
        IEventChannel channel = legacy;
        RegionSlot slot = RegionSlot.Of(2, 0x10_0000);

        channel.OnRegionUpdated(slot);
        channel.OnRegionDetached(slot);
        Assert.True(channel.TryBindVector(slot, 0, out _));
        Assert.False(channel.TryBindVector(slot, 5, out Refusal refusal));

        Assert.Equal(["update 0x200000", "detach 0x200000", "bind 0x200000 0", "bind 0x200000 5"], legacy.Calls);
        Assert.Equal(new Refusal("event-vector.rejected", "only vector 0"), refusal);
    }
}
