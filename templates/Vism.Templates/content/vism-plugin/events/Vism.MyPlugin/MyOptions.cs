using System.ComponentModel;
using Vism.Abstractions;

namespace Vism.MyPlugin;

/// <summary>Options of <c>[device.events] kind = "my-kind"</c>: public settable properties with
/// defaults; <c>HoldUnbound</c> binds the TOML key <c>hold-unbound</c>.</summary>
public sealed class MyOptions : IValidatableOptions
{
    /// <summary>Whether an update of a region with no vector yet is kept and signalled when the driver binds one.</summary>
    [Description("Keep an update of a region with no vector yet and signal it when the driver binds one (false: drop it)")]
    public bool HoldUnbound { get; set; } = true;

    /// <summary>Checks the options before anything starts; reports every problem, throws nothing.</summary>
    /// <param name="context">Where errors go (the host adds file, line and column).</param>
    public void Validate(OptionsValidationContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (context.Device.MaxRegions == 0)
            context.DeviceError("window-size", "the device has no region slots to bind vectors to");
    }
}
