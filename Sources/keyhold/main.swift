import KeyholdCLI

KeyholdMain.run()
