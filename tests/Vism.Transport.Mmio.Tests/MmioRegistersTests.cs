using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using R = Vism.Mmio.MmioRegister;

namespace Vism.Transport.Mmio.Tests;

/// <summary>The register window, register by register, over the device test double.</summary>
public sealed class MmioRegistersTests
{
    private readonly FakeVirtioDevice _device = MmioTestDevice.Create(new InlineLoop());
    private readonly TestCounters _counters = new();
    private readonly MmioRegisters _regs;
    private int _interrupts;

    public MmioRegistersTests() =>
        _regs = new MmioRegisters(_device, () => _interrupts++, _counters, NullLogger.Instance);

    private uint Read(uint offset)
    {
        Assert.Equal(MmioAccessResult.Ok, _regs.Read(offset, 4, out uint v));
        return v;
    }

    private void Write(uint offset, uint value) => Assert.Equal(MmioAccessResult.Ok, _regs.Write(offset, 4, value));

    private void Status(DeviceStatus s) => Write(R.Status, (uint)s);

    private const DeviceStatus AckDriver = DeviceStatus.Acknowledge | DeviceStatus.Driver;

    private void NegotiateFeatures(ulong features)
    {
        Write(R.Status, 0);
        Status(DeviceStatus.Acknowledge);
        Status(AckDriver);
        Write(R.DriverFeaturesSel, 1);
        Write(R.DriverFeatures, (uint)(features >> 32));
        Write(R.DriverFeaturesSel, 0);
        Write(R.DriverFeatures, (uint)features);
        Status(AckDriver | DeviceStatus.FeaturesOk);
    }

    private void SetUpQueue(uint index, uint size, ulong desc, ulong driver, ulong device)
    {
        Write(R.QueueSel, index);
        Write(R.QueueNum, size);
        Write(R.QueueDescLow, (uint)desc);
        Write(R.QueueDescHigh, (uint)(desc >> 32));
        Write(R.QueueDriverLow, (uint)driver);
        Write(R.QueueDriverHigh, (uint)(driver >> 32));
        Write(R.QueueDeviceLow, (uint)device);
        Write(R.QueueDeviceHigh, (uint)(device >> 32));
    }

    [Fact]
    public void IdentityRegistersReadMagicVersionTwoDeviceIdAndVendor()
    {
        Assert.Equal(0x74726976u, Read(R.MagicValue));
        Assert.Equal(2u, Read(R.Version));
        Assert.Equal(Virtio.IsmDeviceId, Read(R.DeviceId));
        Assert.Equal(Virtio.MmioVendorId, Read(R.VendorId));
    }

    [Fact]
    public void DeviceFeaturesShowsTheWordThatDeviceFeaturesSelSelects()
    {
        Write(R.DeviceFeaturesSel, 0);
        Assert.Equal((uint)_device.DeviceFeatures, Read(R.DeviceFeatures));
        Write(R.DeviceFeaturesSel, 1);
        uint high = Read(R.DeviceFeatures);
        Assert.Equal((uint)(_device.DeviceFeatures >> 32), high);
        Assert.True((high & 1) != 0, "VERSION_1 (bit 32) is offered");
        Write(R.DeviceFeaturesSel, 2);
        Assert.Equal(0u, Read(R.DeviceFeatures));
    }

    [Fact]
    public void DriverFeaturesAreAssembledFromBothWordsAndHandedToTheDevice()
    {
        ulong wanted = Features.Mask(Features.Version1, Features.IsmEventIrq);
        NegotiateFeatures(wanted);
        Assert.Equal(wanted, _device.DriverFeatures);
        Assert.Equal(AckDriver | DeviceStatus.FeaturesOk, (DeviceStatus)Read(R.Status));
    }

    [Fact]
    public void DriverFeaturesWrittenAfterFeaturesOkAreRefusedAndCounted()
    {
        NegotiateFeatures(Features.Mask(Features.Version1));
        Write(R.DriverFeaturesSel, 0);
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.DriverFeatures, 4, 0x2));
        Assert.Equal(Features.Mask(Features.Version1), _device.DriverFeatures);
        Assert.Equal(1, _counters.Get("mmio.write.refused"));
    }

    [Fact]
    public void DriverFeaturesSelBeyondTheSecondWordSelectsNothing()
    {
        Status(DeviceStatus.Acknowledge);
        Status(AckDriver);
        Write(R.DriverFeaturesSel, 5);
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.DriverFeatures, 4, 0xffff));
        Assert.Equal(MmioAccessResult.Ok, _regs.Write(R.DriverFeatures, 4, 0));
        Assert.Equal(0ul, _device.DriverFeatures);
    }

    [Fact]
    public void StatusFollowsTheInitialisationSequenceToDriverOk()
    {
        NegotiateFeatures(Features.Mask(Features.Version1));
        SetUpQueue(0, 64, 0x1000, 0x2000, 0x3000);
        Write(R.QueueReady, 1);
        Status(AckDriver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk);
        Assert.Equal(AckDriver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk, (DeviceStatus)Read(R.Status));
    }

    [Fact]
    public void StatusWrittenOutOfOrderIsRefusedAndLeavesTheStatusUnchanged()
    {
        Status(DeviceStatus.Acknowledge);
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.Status, 4, (uint)(DeviceStatus.Acknowledge | DeviceStatus.DriverOk)));
        Assert.Equal(DeviceStatus.Acknowledge, (DeviceStatus)Read(R.Status));
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.Status, 4, 0x1_01));
        Assert.Equal(2, _counters.Get("mmio.write.refused"));
    }

    [Fact]
    public void FeaturesOkWithoutVersion1IsNotLatched()
    {
        Status(DeviceStatus.Acknowledge);
        Status(AckDriver);
        Write(R.DriverFeaturesSel, 0);
        Write(R.DriverFeatures, 1u << Features.IsmEventIrq);
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.Status, 4, (uint)(AckDriver | DeviceStatus.FeaturesOk)));
        Assert.Equal(AckDriver, (DeviceStatus)Read(R.Status));
    }

    [Fact]
    public void WritingZeroToStatusResetsTheDeviceAndEveryTransportRegister()
    {
        NegotiateFeatures(Features.Mask(Features.Version1));
        int resets = 0, deviceResets = _device.ResetCount;
        _regs.DeviceReset = () => resets++;
        SetUpQueue(1, 32, 0x1000, 0x2000, 0x3000);
        Write(R.QueueReady, 1);
        _regs.SignalUsedBuffer();
        Write(R.ShmSel, 1);
        Write(R.DeviceFeaturesSel, 1);

        Write(R.Status, 0);

        Assert.Equal(1, resets);
        Assert.Equal(deviceResets + 1, _device.ResetCount);
        Assert.Equal(0u, Read(R.Status));
        Assert.Equal(0u, Read(R.InterruptStatus));
        Assert.Equal((uint)_device.DeviceFeatures, Read(R.DeviceFeatures)); // selector back to 0
        Write(R.QueueSel, 1);
        Assert.Equal(0u, Read(R.QueueReady));
    }

    [Fact]
    public void QueueSetUpInLinuxOrderStartsTheQueueWithTheStagedLayout()
    {
        NegotiateFeatures(Features.Mask(Features.Version1));
        Write(R.QueueSel, 0);
        Assert.Equal(0u, Read(R.QueueReady));
        Assert.Equal(256u, Read(R.QueueNumMax));
        SetUpQueue(0, 128, 0x1_2345_6000, 0x1_2345_7000, 0x1_2345_8000);
        Assert.Empty(_device.StartedQueues);

        Write(R.QueueReady, 1);

        var (index, s) = Assert.Single(_device.StartedQueues);
        Assert.Equal(0, index);
        Assert.Equal(new QueueSettings(128, 0x1_2345_6000, 0x1_2345_7000, 0x1_2345_8000), s);
        Assert.Equal(1u, Read(R.QueueReady));
    }

    [Fact]
    public void QueueReadyBeforeFeaturesOkIsRefused()
    {
        Status(DeviceStatus.Acknowledge);
        Status(AckDriver);
        SetUpQueue(0, 64, 0x1000, 0x2000, 0x3000);
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.QueueReady, 4, 1));
        Assert.Equal(0u, Read(R.QueueReady));
        Assert.Empty(_device.StartedQueues);
    }

    [Fact]
    public void QueueTheDeviceRefusesStaysNotReady()
    {
        NegotiateFeatures(Features.Mask(Features.Version1));
        SetUpQueue(0, 100, 0x1000, 0x2000, 0x3000); // not a power of two
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.QueueReady, 4, 1));
        Assert.Equal(0u, Read(R.QueueReady));
        Write(R.QueueNum, 0x1_0000); // larger than any u16 queue size
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.QueueReady, 4, 1));
        Assert.Equal(0u, Read(R.QueueReady));
        Assert.Equal(2, _counters.Get("mmio.write.refused"));
    }

    [Fact]
    public void QueueRegistersAreIgnoredWhileTheQueueIsReady()
    {
        NegotiateFeatures(Features.Mask(Features.Version1));
        SetUpQueue(0, 64, 0x1000, 0x2000, 0x3000);
        Write(R.QueueReady, 1);
        foreach (uint reg in new[] { R.QueueNum, R.QueueDescLow, R.QueueDescHigh, R.QueueDriverLow, R.QueueDriverHigh, R.QueueDeviceLow, R.QueueDeviceHigh })
            Assert.Equal(MmioAccessResult.Refused, _regs.Write(reg, 4, 0x9000));
        // Stop and restart: the layout is the one staged before, untouched by the refused writes.
        Write(R.QueueReady, 0);
        Assert.Equal(0, Assert.Single(_device.StoppedQueues));
        Write(R.QueueReady, 1);
        Assert.Equal(2, _device.StartedQueues.Count);
        Assert.All(_device.StartedQueues, q => Assert.Equal(new QueueSettings(64, 0x1000, 0x2000, 0x3000), q.Settings));
    }

    [Fact]
    public void QueueTheDeviceDoesNotHaveReportsSizeZeroAndRefusesSetUp()
    {
        NegotiateFeatures(Features.Mask(Features.Version1));
        Write(R.QueueSel, 2); // the double has queues 0 and 1
        Assert.Equal(0u, Read(R.QueueNumMax));
        Assert.Equal(0u, Read(R.QueueReady));
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.QueueNum, 4, 64));
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.QueueReady, 4, 1));
        Assert.Empty(_device.StartedQueues);
    }

    [Fact]
    public void QueueReadyTakesOnlyZeroOrOne()
    {
        NegotiateFeatures(Features.Mask(Features.Version1));
        SetUpQueue(0, 64, 0x1000, 0x2000, 0x3000);
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.QueueReady, 4, 2));
        Assert.Equal(0u, Read(R.QueueReady));
    }

    [Fact]
    public void QueueResetNeedsRingResetAndThenStopsAndClearsTheQueue()
    {
        // The ISM device does not offer VIRTIO_F_RING_RESET; the transport implements QueueReset for a device that does.
        _device.DeviceFeatures |= Features.Mask(Features.RingReset);
        NegotiateFeatures(Features.Mask(Features.Version1));
        SetUpQueue(0, 64, 0x1000, 0x2000, 0x3000);
        Write(R.QueueReady, 1);
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.QueueReset, 4, 1));
        Assert.Equal(1u, Read(R.QueueReady));

        NegotiateFeatures(Features.Mask(Features.Version1, Features.RingReset));
        SetUpQueue(0, 64, 0x1000, 0x2000, 0x3000);
        Write(R.QueueReady, 1);
        Write(R.QueueReset, 1);
        Assert.Equal(0u, Read(R.QueueReset));
        Assert.Equal(0u, Read(R.QueueReady));
        Assert.Contains(0, _device.StoppedQueues);
        // The staged layout was cleared: re-enabling needs a fresh set-up (size is back to the maximum, rings at 0).
        Write(R.QueueReady, 1);
        Assert.Equal(new QueueSettings(256, 0, 0, 0), _device.StartedQueues.Last().Settings);
    }

    [Fact]
    public void QueueNotifyKicksOnlyAReadyQueue()
    {
        NegotiateFeatures(Features.Mask(Features.Version1));
        SetUpQueue(0, 64, 0x1000, 0x2000, 0x3000);
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.QueueNotify, 4, 0));
        Write(R.QueueReady, 1);
        Write(R.QueueNotify, 0);
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.QueueNotify, 4, 1));
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.QueueNotify, 4, 7));
        Assert.Equal([0], _device.Kicks);
    }

    [Fact]
    public void InterruptStatusHoldsEachEventUntilTheDriverAcknowledgesIt()
    {
        Assert.Equal(0u, Read(R.InterruptStatus));
        _regs.SignalUsedBuffer();
        Assert.Equal(1, _interrupts);
        Assert.Equal(R.InterruptUsedBuffer, Read(R.InterruptStatus));
        _regs.SignalConfigChange();
        Assert.Equal(2, _interrupts);
        Assert.Equal(R.InterruptUsedBuffer | R.InterruptConfigChange, Read(R.InterruptStatus));
        Write(R.InterruptAck, R.InterruptUsedBuffer);
        Assert.Equal(R.InterruptConfigChange, Read(R.InterruptStatus));
        Write(R.InterruptAck, 0xffff_fffe);
        Assert.Equal(0u, Read(R.InterruptStatus));
    }

    [Fact]
    public void ShmRegistersReportEachWindowsLengthAndTheBaseTheVmmChose()
    {
        Assert.True(_regs.SetShmBase(ShmId.Regions, 0x1_0000_0000));
        Write(R.ShmSel, (uint)ShmId.Regions);
        Assert.Equal((uint)MmioTestDevice.RegionsLength, Read(R.ShmLenLow));
        Assert.Equal(0u, Read(R.ShmLenHigh));
        Assert.Equal(0u, Read(R.ShmBaseLow));
        Assert.Equal(1u, Read(R.ShmBaseHigh));
        Write(R.ShmSel, (uint)ShmId.Notify);
        Assert.Equal((uint)MmioTestDevice.NotifyLength, Read(R.ShmLenLow));
        Assert.Equal(0u, Read(R.ShmBaseLow)); // not placed yet
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(3u)]
    [InlineData(0x100u)]
    [InlineData(0xffff_ffffu)]
    public void ShmIdTheDeviceLacksReadsAllOnesLengthAndBase(uint id)
    {
        Write(R.ShmSel, id);
        Assert.Equal(0xffff_ffffu, Read(R.ShmLenLow));
        Assert.Equal(0xffff_ffffu, Read(R.ShmLenHigh));
        Assert.Equal(0xffff_ffffu, Read(R.ShmBaseLow));
        Assert.Equal(0xffff_ffffu, Read(R.ShmBaseHigh));
    }

    [Fact]
    public void ShmBaseOfAMissingWindowOrOneThatWrapsIsRefused()
    {
        Assert.False(_regs.SetShmBase(ShmId.Undefined, 0x1000));
        Assert.False(_regs.SetShmBase(ShmId.Regions, ulong.MaxValue - 0x1000));
    }

    [Fact]
    public void ConfigGenerationReadsTheDevicesGeneration()
    {
        Assert.Equal(3u, Read(R.ConfigGeneration));
        _device.ConfigGeneration = 4;
        Assert.Equal(4u, Read(R.ConfigGeneration));
    }

    [Fact]
    public void ConfigSpaceReadsAtByteWordAndDwordWidthsLittleEndian()
    {
        Assert.Equal(MmioAccessResult.Ok, _regs.Read(R.Config, 4, out uint lo));
        Assert.Equal(MmioAccessResult.Ok, _regs.Read(R.Config + 4, 4, out uint hi));
        Assert.Equal(0x1122334455667788ul, ((ulong)hi << 32) | lo);
        Assert.Equal(MmioAccessResult.Ok, _regs.Read(R.Config + 2, 2, out uint w));
        Assert.Equal(0x5566u, w);
        Assert.Equal(MmioAccessResult.Ok, _regs.Read(R.Config + 7, 1, out uint b));
        Assert.Equal(0x11u, b);
        Assert.Equal(MmioAccessResult.Ok, _regs.Read(R.Config + 8, 4, out uint devid));
        Assert.Equal(7u, devid);
    }

    [Theory]
    [InlineData(1u, 2)] // misaligned word
    [InlineData(2u, 4)] // misaligned dword
    [InlineData(0u, 8)] // 64-bit fields are read as two dwords
    [InlineData(0u, 3)]
    public void ConfigAccessOfTheWrongWidthOrAlignmentReadsZeroAndIsCounted(uint rel, int width)
    {
        Assert.Equal(MmioAccessResult.BadWidth, _regs.Read(R.Config + rel, width, out uint v));
        Assert.Equal(0u, v);
        Assert.Equal(1, _counters.Get("mmio.access.width"));
    }

    [Theory]
    [InlineData(32u, 1)]
    [InlineData(28u, 8)]
    [InlineData(0xe00u, 4)]
    public void ConfigAccessPastTheEndOfTheConfigSpaceReadsZero(uint rel, int width)
    {
        MmioAccessResult r = _regs.Read(R.Config + rel, width, out uint v);
        Assert.NotEqual(MmioAccessResult.Ok, r);
        Assert.Equal(0u, v);
    }

    [Fact]
    public void ConfigWritesAreRefusedBecauseTheIsmConfigSpaceIsReadOnly()
    {
        Assert.Equal(MmioAccessResult.Refused, _regs.Write(R.Config, 4, 0xdead));
        Assert.Equal(MmioAccessResult.Ok, _regs.Read(R.Config + 8, 4, out uint devid));
        Assert.Equal(7u, devid);
    }

    [Theory]
    [InlineData(R.MagicValue, 1)]
    [InlineData(R.MagicValue, 2)]
    [InlineData(R.MagicValue, 8)]
    [InlineData(R.Version + 2, 2)]
    [InlineData(R.Status + 1, 4)]
    public void ControlRegistersAnswerOnlyAligned32BitAccesses(uint offset, int width)
    {
        Assert.Equal(MmioAccessResult.BadWidth, _regs.Read(offset, width, out uint v));
        Assert.Equal(0u, v);
        Assert.Equal(MmioAccessResult.BadWidth, _regs.Write(offset, width, 0));
        Assert.Equal(2, _counters.Get("mmio.access.width"));
    }

    [Fact]
    public void StatusWrittenWithTheWrongWidthIsIgnored()
    {
        Assert.Equal(MmioAccessResult.BadWidth, _regs.Write(R.Status, 1, 1));
        Assert.Equal(0u, Read(R.Status));
    }

    [Theory]
    [InlineData(0x018u)]
    [InlineData(0x028u)] // legacy GuestPageSize
    [InlineData(0x03cu)] // legacy QueueAlign
    [InlineData(0x040u)] // legacy QueuePFN
    [InlineData(0x0a8u)]
    [InlineData(0x0c4u)]
    [InlineData(0x0f8u)]
    public void UndefinedOffsetsReadZeroAndIgnoreWrites(uint offset)
    {
        Assert.Equal(MmioAccessResult.Undefined, _regs.Read(offset, 4, out uint v));
        Assert.Equal(0u, v);
        Assert.Equal(MmioAccessResult.Undefined, _regs.Write(offset, 4, 0xffff_ffff));
        Assert.Equal(2, _counters.Get("mmio.access.undefined"));
        Assert.Equal(0u, Read(R.Status));
    }

    [Theory]
    [InlineData(R.DeviceFeaturesSel)]
    [InlineData(R.DriverFeatures)]
    [InlineData(R.DriverFeaturesSel)]
    [InlineData(R.QueueSel)]
    [InlineData(R.QueueNum)]
    [InlineData(R.QueueNotify)]
    [InlineData(R.InterruptAck)]
    [InlineData(R.QueueDescLow)]
    [InlineData(R.QueueDeviceHigh)]
    [InlineData(R.ShmSel)]
    public void WriteOnlyRegistersReadZero(uint offset)
    {
        Assert.Equal(MmioAccessResult.WrongDirection, _regs.Read(offset, 4, out uint v));
        Assert.Equal(0u, v);
        Assert.Equal(1, _counters.Get("mmio.access.direction"));
    }

    [Theory]
    [InlineData(R.MagicValue)]
    [InlineData(R.Version)]
    [InlineData(R.DeviceId)]
    [InlineData(R.VendorId)]
    [InlineData(R.DeviceFeatures)]
    [InlineData(R.QueueNumMax)]
    [InlineData(R.InterruptStatus)]
    [InlineData(R.ShmLenLow)]
    [InlineData(R.ShmBaseHigh)]
    [InlineData(R.ConfigGeneration)]
    public void ReadOnlyRegistersIgnoreWrites(uint offset)
    {
        Assert.Equal(MmioAccessResult.Ok, _regs.Read(offset, 4, out uint before));
        Assert.Equal(MmioAccessResult.WrongDirection, _regs.Write(offset, 4, ~before));
        Assert.Equal(before, Read(offset));
        Assert.Equal(1, _counters.Get("mmio.access.direction"));
    }

    [Fact]
    public void WindowSizeCoversTheConfigSpaceAndIsAtLeast0x200()
    {
        Assert.Equal(0x200u, _regs.WindowSize);
    }

    [Fact]
    public void NotifyWindowWritesReachTheDeviceWithTheirOffset()
    {
        Assert.Equal(MmioAccessResult.Ok, _regs.WriteNotifyWindow(0, 1));
        Assert.Equal(MmioAccessResult.Ok, _regs.WriteNotifyWindow(5, 1));
        Assert.Equal(MmioAccessResult.Ok, _regs.WriteNotifyWindow(MmioTestDevice.NotifyLength - 4, 4));
        Assert.Equal([0ul, 5ul, MmioTestDevice.NotifyLength - 4], _device.NotifyWrites);
    }

    [Theory]
    [InlineData(MmioTestDevice.NotifyLength, 1)]
    [InlineData(MmioTestDevice.NotifyLength - 2, 4)]
    [InlineData(ulong.MaxValue, 1)]
    [InlineData(0ul, 3)]
    [InlineData(0ul, 16)]
    public void NotifyWritesOutsideTheWindowOrOfAnOddWidthNeverReachTheDevice(ulong offset, int width)
    {
        Assert.NotEqual(MmioAccessResult.Ok, _regs.WriteNotifyWindow(offset, width));
        Assert.Empty(_device.NotifyWrites);
        Assert.Equal(1, _counters.Get("mmio.notify.rejected"));
    }
}
