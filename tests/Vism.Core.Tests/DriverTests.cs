using Vism.Core.InMemory;
using Vism.Core.Virtqueues;

namespace Vism.Core.Tests;

/// <summary>The driver side: virtio probe, queue builder, in-memory transport.</summary>
public sealed class DriverTests
{
    [Fact]
    public void ProbeNegotiatesOnlyFeaturesBothSidesWantAndSizesQueuesToTheDevice()
    {
        using var rig = new Rig();
        Peer p = rig.AddDevice("p", RecordingEventChannel.Vq());
        p.Connect(startClient: false);
        VirtioDriver driver = VirtioDriver.Start(p.T, Features.Mask(Features.IsmEventVq, Features.IsmEventIrq, 60),
            f => Features.Has(f, Features.IsmEventVq) ? 2 : 1, queueSize: 1000);
        Assert.Equal(Features.Mask(Features.Version1, Features.IsmEventVq), driver.Features);
        Assert.Equal(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk, p.T.ReadStatus());
        Assert.Equal(2, driver.Queues.Count);
        Assert.All(driver.Queues, q => Assert.Equal(IsmDevice.DefaultMaxQueueSize, q.Size));
        Assert.True(p.T.Call(d => d.IsQueueStarted(1)));
    }

    [Fact]
    public void ProbeSetsFailedWhenItCannotFinish()
    {
        using var rig = new Rig();
        Peer p = rig.AddDevice("p", RecordingEventChannel.Irq());
        p.Connect(startClient: false);
        Assert.ThrowsAny<Exception>(() => VirtioDriver.Start(p.T, 0, _ => 3)); // the device has one queue
        Assert.True((p.T.ReadStatus() & DeviceStatus.Failed) != 0);
        // A new probe starts with a reset and succeeds.
        Assert.Single(VirtioDriver.Start(p.T, 0, _ => 1).Queues);
    }

    [Fact]
    public void QueueSizeIsTheLargestPowerOfTwoNotAboveTheRequest()
    {
        using var rig = new Rig();
        Peer p = rig.AddDevice("p");
        p.Connect(startClient: false);
        VirtioDriver driver = VirtioDriver.Start(p.T, 0, _ => 1, queueSize: 100);
        Assert.Equal(64, driver.Queues[0].Size);
    }

    [Fact]
    public void KicksAreNeededOnlyForChainsTheDeviceHasNotAskedPastWithEventIdx()
    {
        using var ram = new GuestRam();
        var driver = new DriverQueue(ram, 0, 8, eventIdx: true);
        var device = new SplitQueue(0);
        device.Configure(driver.Settings, eventIdx: true, indirectDesc: false);
        ulong b = ram.Allocate(8);

        driver.Add([new(b, 8)], []);
        Assert.True(driver.ShouldKick());
        Assert.Equal(PopResult.Chain, device.TryPop(ram, out _, out _));
        Assert.Equal(PopResult.Empty, device.TryPop(ram, out _, out _)); // publishes avail_event = 1
        driver.Add([new(b, 8)], []);
        Assert.True(driver.ShouldKick());
        driver.Add([new(b, 8)], []);
        Assert.False(driver.ShouldKick()); // the device has not caught up with the previous kick yet
    }

    [Fact]
    public void AFullQueueRefusesMoreChainsUntilTheDeviceReturnsSome()
    {
        using var ram = new GuestRam();
        var driver = new DriverQueue(ram, 0, 4, eventIdx: false);
        var device = new SplitQueue(0);
        device.Configure(driver.Settings, eventIdx: false, indirectDesc: false);
        ulong b = ram.Allocate(8);
        driver.Add([new(b, 8), new(b, 8), new(b, 8)], []);
        Assert.Throws<InvalidOperationException>(() => driver.Add([new(b, 8), new(b, 8)], []));
        driver.Add([], [new(b, 8)]);
        Assert.Equal(0, driver.FreeDescriptors);
        Assert.Equal(PopResult.Chain, device.TryPop(ram, out DescriptorChain? chain, out _));
        Assert.True(device.TryAddUsed(ram, chain!.Head, 0, out bool interrupt, out _));
        Assert.True(interrupt);
        Assert.True(driver.TryTakeUsed(out _));
        Assert.Equal(3, driver.FreeDescriptors);
    }

    [Fact]
    public void ADeviceReturningAnIdItWasNotGivenIsReported()
    {
        using var ram = new GuestRam();
        var driver = new DriverQueue(ram, 0, 4, eventIdx: false);
        var device = new SplitQueue(0);
        device.Configure(driver.Settings, eventIdx: false, indirectDesc: false);
        Assert.True(device.TryAddUsed(ram, 3, 0, out _, out _));
        Assert.Throws<DriverTransportException>(() => driver.TryTakeUsed(out _));
    }

    [Fact]
    public async Task InMemoryTransportRefusesOverlappingUnalignedAndOutOfWindowMappings()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        var backend = new InMemoryBackend(Rig.MiB);
        using IMemoryBlock block = backend.TryAllocate(8192, 1, out _)!;
        ulong window = p.Device.Description.RegionsWindowSize;

        Task<string?> Map(ulong at, ulong length, ShmId id = ShmId.Regions) =>
            p.Device.Loop.InvokeAsync(async () => await p.T.MapAsync(id, at, block, length, true)).WaitAsync(Rig.Wait);

        Assert.Null(await Map(0, 8192));
        Assert.Contains("overlaps", await Map(4096, 4096));
        Assert.Contains("page aligned", await Map(Rig.MiB + 100, 4096));
        Assert.Contains("outside", await Map(window - 4096, 8192));
        Assert.Contains("block", await Map(Rig.MiB, 16384));
        Assert.NotNull(await Map(0, 4096, ShmId.Notify));
    }
}
