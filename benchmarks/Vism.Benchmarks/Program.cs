using BenchmarkDotNet.Running;

if (args is ["idle-cost", .. var rest])
    return Vism.Benchmarks.IdleCost.Run(rest);
if (args is ["fairness", .. var fairnessArgs])
    return Vism.Benchmarks.Fairness.Run(fairnessArgs);
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
return 0;

public partial class Program;
