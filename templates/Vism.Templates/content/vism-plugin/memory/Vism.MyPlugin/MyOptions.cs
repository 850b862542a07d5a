using System.ComponentModel;
using Vism.Abstractions;

namespace Vism.MyPlugin;

/// <summary>Options of <c>[device.memory] kind = "my-kind"</c>: public settable properties with
/// defaults; <c>Capacity</c> binds the TOML key <c>capacity</c> (a size: <c>"256MiB"</c> or bytes).</summary>
public sealed class MyOptions : IValidatableOptions
{
    /// <summary>Allocation granularity.</summary>
    internal const ulong Page = 4096;

    /// <summary>Most bytes this device's regions may hold at once.</summary>
    [Description("Most bytes this device's regions may hold at once")]
    public ulong Capacity { get; set; } = 256UL << 20;

    /// <summary>Checks the options before anything starts; reports every problem, throws nothing.</summary>
    /// <param name="context">Where errors go (the host adds file, line and column).</param>
    public void Validate(OptionsValidationContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (Capacity == 0 || Capacity % Page != 0)
            context.Error("capacity", $"{Capacity} is not a positive multiple of {Page}");
        else if (context.Device.RegionSize > Capacity)
            context.DeviceError("region-size", $"a region ({context.Device.RegionSize} bytes) is larger than capacity ({Capacity} bytes)");
        if (context.Device.RegionSize % Page != 0)
            context.DeviceError("region-size", $"must be a multiple of {Page} for memory kind {MyPlugin.Kind}");
    }
}
